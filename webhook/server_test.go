package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"
)

func newHandlerServer(t testing.TB) *Server {
	return &Server{sidecar: goldenSidecar(), logger: testLogger(t), mutate: Mutate}
}

// review wraps a Deployment (as JSON) in an AdmissionReview the way the API
// server sends it.
func review(t testing.TB, op admissionv1.Operation, object []byte) []byte {
	t.Helper()
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "0b7f4b2e-6a4e-4c55-9a43-2d1e5f0c9d11",
			Kind:      deploymentKind,
			Resource:  metav1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
			Namespace: "shop",
			Name:      "shop",
			Operation: op,
			Object:    runtime.RawExtension{Raw: object},
		},
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func deploymentJSON(t testing.TB, path string) []byte {
	t.Helper()
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func post(t testing.TB, h http.Handler, body []byte) (*httptest.ResponseRecorder, *admissionv1.AdmissionReview) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		return rec, nil
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v\n%s", err, rec.Body.String())
	}
	return rec, &out
}

// TestMutateEndpoint: the patch the server returns, applied by a JSON patch
// implementation to the object as sent, gives the golden output, and keeps
// fields the webhook's API types do not know.
func TestMutateEndpoint(t *testing.T) {
	h := newHandlerServer(t).Handler()
	object := deploymentJSON(t, "testdata/inject/basic/in.yaml")
	// A field from a future Kubernetes version, unknown to k8s.io/api.
	var m map[string]any
	json.Unmarshal(object, &m)
	m["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["futureField"] = "kept"
	object, _ = json.Marshal(m)

	rec, out := post(t, h, review(t, admissionv1.Create, object))
	if out == nil {
		t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" {
		t.Errorf("response type %s %s", out.APIVersion, out.Kind)
	}
	resp := out.Response
	if resp == nil || resp.UID != "0b7f4b2e-6a4e-4c55-9a43-2d1e5f0c9d11" || !resp.Allowed {
		t.Fatalf("response: %+v", resp)
	}
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("patch type %v", resp.PatchType)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatalf("patch: %v\n%s", err, resp.Patch)
	}
	patched, err := patch.Apply(object)
	if err != nil {
		t.Fatalf("apply patch: %v", err)
	}
	if !strings.Contains(string(patched), `"futureField":"kept"`) {
		t.Error("the patch dropped a field unknown to the webhook")
	}
	var got appsv1.Deployment
	json.Unmarshal(patched, &got)
	want := readDeployment(t, "testdata/inject/basic/out.yaml")
	if !equality.Semantic.DeepEqual(&got, want) {
		t.Errorf("patched object differs from golden:\n%s", diff(deploymentYAML(t, want), deploymentYAML(t, &got)))
	}

	// The injected object sent again: allowed, no patch.
	_, out = post(t, h, review(t, admissionv1.Update, patched))
	if out == nil || !out.Response.Allowed || out.Response.Patch != nil {
		t.Errorf("second pass: %+v", out.Response)
	}
}

func TestMutateEndpointAllowsWhatItCannotHandle(t *testing.T) {
	s := newHandlerServer(t)
	h := s.Handler()
	deployment := deploymentJSON(t, "testdata/inject/basic/in.yaml")

	warned := func(name string, body []byte, want string) {
		t.Run(name, func(t *testing.T) {
			rec, out := post(t, h, body)
			if out == nil {
				t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
			}
			if !out.Response.Allowed || out.Response.Patch != nil {
				t.Errorf("want allowed without patch: %+v", out.Response)
			}
			if !strings.Contains(strings.Join(out.Response.Warnings, "\n"), want) {
				t.Errorf("warnings %q lack %q", out.Response.Warnings, want)
			}
		})
	}

	var r admissionv1.AdmissionReview
	json.Unmarshal(review(t, admissionv1.Create, []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}`)), &r)
	r.Request.Kind = metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	pod, _ := json.Marshal(r)
	warned("a Pod", pod, "only apps/v1 Deployments")

	warned("hostPID", review(t, admissionv1.Create, deploymentJSON(t, "testdata/inject/host-pid/in.yaml")), "hostPID")

	// A panic in the mutation is answered, and the server goes on.
	s.mutate = func(*appsv1.Deployment, Sidecar) Result { panic("boom") }
	warned("panic", review(t, admissionv1.Create, deployment), "internal error")
	s.mutate = Mutate
	_, out := post(t, h, review(t, admissionv1.Create, deployment))
	if out == nil || out.Response.Patch == nil {
		t.Error("no patch after a panic")
	}

	t.Run("DELETE", func(t *testing.T) {
		_, out := post(t, h, review(t, admissionv1.Delete, nil))
		if out == nil || !out.Response.Allowed || out.Response.Patch != nil {
			t.Errorf("DELETE: %+v", out)
		}
	})
}

// TestMutateEndpointRejectsMalformed: bodies that are not an answerable
// AdmissionReview get a clear 400, and the server keeps serving.
func TestMutateEndpointRejectsMalformed(t *testing.T) {
	h := newHandlerServer(t).Handler()
	good := review(t, admissionv1.Create, deploymentJSON(t, "testdata/inject/basic/in.yaml"))
	edit := func(f func(*admissionv1.AdmissionReview)) []byte {
		var r admissionv1.AdmissionReview
		json.Unmarshal(good, &r)
		f(&r)
		b, _ := json.Marshal(r)
		return b
	}
	for _, tc := range []struct {
		name string
		body []byte
		want string
	}{
		{"empty", nil, "not an AdmissionReview"},
		{"not JSON", []byte("hello"), "not an AdmissionReview"},
		{"truncated", good[:len(good)/2], "not an AdmissionReview"},
		{"array", []byte("[1,2]"), "not an AdmissionReview"},
		{"null", []byte("null"), "want admission.k8s.io/v1 AdmissionReview"},
		{"trailing data", append(append([]byte{}, good...), "{}"...), "data after"},
		{"v1beta1", edit(func(r *admissionv1.AdmissionReview) { r.APIVersion = "admission.k8s.io/v1beta1" }), "want admission.k8s.io/v1 AdmissionReview"},
		{"wrong kind", edit(func(r *admissionv1.AdmissionReview) { r.Kind = "Deployment" }), "want admission.k8s.io/v1 AdmissionReview"},
		{"no request", edit(func(r *admissionv1.AdmissionReview) { r.Request = nil }), "no request"},
		{"no uid", edit(func(r *admissionv1.AdmissionReview) { r.Request.UID = "" }), "no uid"},
		{"no object", edit(func(r *admissionv1.AdmissionReview) { r.Request.Object.Raw = nil }), "no object"},
		{"null object", edit(func(r *admissionv1.AdmissionReview) { r.Request.Object.Raw = []byte("null") }), "no object"},
		{"object not an object", []byte(strings.Replace(string(edit(func(r *admissionv1.AdmissionReview) { r.Request.Object.Raw = []byte(`{"x":1}`) })), `{"x":1}`, `[1]`, 1)), "not a Deployment"},
		{"object of another kind", edit(func(r *admissionv1.AdmissionReview) {
			r.Request.Object.Raw = []byte(`{"apiVersion":"v1","kind":"Pod"}`)
		}), "kind \"Pod\""},
		{"object with bad types", edit(func(r *admissionv1.AdmissionReview) {
			r.Request.Object.Raw = []byte(`{"apiVersion":"apps/v1","kind":"Deployment","spec":{"replicas":"two"}}`)
		}), "not a Deployment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, _ := post(t, h, tc.body)
			if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), tc.want) {
				t.Errorf("got %d %q, want 400 with %q", rec.Code, rec.Body.String(), tc.want)
			}
		})
	}

	t.Run("too large", func(t *testing.T) {
		rec, _ := post(t, h, bytes.Repeat([]byte(" "), maxBodyBytes+1))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("got %d", rec.Code)
		}
	})
	t.Run("GET", func(t *testing.T) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/mutate", nil))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("got %d", rec.Code)
		}
	})
	t.Run("still serving", func(t *testing.T) {
		if _, out := post(t, h, good); out == nil || out.Response.Patch == nil {
			t.Error("no patch")
		}
	})
}

// FuzzMutateEndpoint: whatever the body, the server answers 200 with an
// allowing AdmissionReview or 400, and never panics.
func FuzzMutateEndpoint(f *testing.F) {
	h := newHandlerServer(f).Handler()
	for _, path := range []string{"testdata/inject/basic/in.yaml", "testdata/inject/settings/in.yaml", "testdata/inject/disabled/in.yaml", "testdata/inject/bad-annotations/in.yaml"} {
		f.Add(review(f, admissionv1.Create, deploymentJSON(f, path)))
		f.Add(review(f, admissionv1.Update, deploymentJSON(f, path)))
	}
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"apps","version":"v1","kind":"Deployment"},"operation":"CREATE","object":{"metadata":{"annotations":{"podtracer.io/inject":"true"}},"spec":{"template":{"metadata":{"annotations":{"podtracer.io/status":"{"}}}}}}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusBadRequest:
		case http.StatusOK:
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil || !out.Response.Allowed {
				t.Fatalf("bad 200 answer: %v %s", err, rec.Body.String())
			}
			if out.Response.Patch != nil {
				if _, err := jsonpatch.DecodePatch(out.Response.Patch); err != nil {
					t.Fatalf("bad patch: %v", err)
				}
			}
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body.String())
		}
	})
}

// TestMutateEndpointPatchIsExact: when the injected container is not the
// last one (the user added one after it), a changed sidecar stays where
// it is and a removed one's followers move up; their int64 fields beyond
// 2^53 must come through exactly, not rounded to a float64.
func TestMutateEndpointPatchIsExact(t *testing.T) {
	h := newHandlerServer(t).Handler()
	d := readDeployment(t, "testdata/inject/basic/out.yaml")
	const big = int64(1<<53 + 1)
	d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{
		Name:          "cache",
		Image:         "redis:7",
		LivenessProbe: &corev1.Probe{TerminationGracePeriodSeconds: new(big)},
	})
	object, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}

	for name, obj := range map[string][]byte{
		"re-injected": bytes.Replace(object, []byte(`"podtracer.io/inject":"true"`), []byte(`"podtracer.io/inject":"true","podtracer.io/log-level":"debug"`), 1),
		"removed":     bytes.Replace(object, []byte(`"podtracer.io/inject":"true"`), []byte(`"podtracer.io/inject":"false"`), 1),
	} {
		t.Run(name, func(t *testing.T) {
			patched := patchedUpdate(t, h, obj)
			var got appsv1.Deployment
			if err := json.Unmarshal(patched, &got); err != nil {
				t.Fatal(err)
			}
			var in appsv1.Deployment
			json.Unmarshal(obj, &in)
			want := Mutate(&in, goldenSidecar()).Deployment
			if !equality.Semantic.DeepEqual(&got, want) {
				t.Errorf("patched object differs from the mutation (-want +got):\n%s", diff(deploymentYAML(t, want), deploymentYAML(t, &got)))
			}
		})
	}
}

// TestMutateEndpointKeepsOtherContainers: a sidecar put in, changed,
// taken out, or moved from among the containers (where webhooks before
// native sidecars put it) to the init containers leaves the others where
// they are, with the fields the webhook's API types do not know (a newer
// cluster's) on the container they belong to.
func TestMutateEndpointKeepsOtherContainers(t *testing.T) {
	h := newHandlerServer(t).Handler()
	// future marks a container with a field these types do not know.
	future := func(d *appsv1.Deployment) []byte {
		object, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		json.Unmarshal(object, &m)
		spec := m["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
		for _, list := range []string{"containers", "initContainers"} {
			l, _ := spec[list].([]any)
			for _, c := range l {
				c := c.(map[string]any)
				if name := c["name"].(string); name != ContainerName && name != "shop" {
					c["futureContainerField"] = name + "'s"
				}
			}
		}
		object, _ = json.Marshal(m)
		return object
	}
	migrate := corev1.Container{Name: "migrate", Image: "shop:1", Args: []string{"migrate"}}
	fresh := readDeployment(t, "testdata/inject/basic/in.yaml")
	fresh.Spec.Template.Spec.InitContainers = []corev1.Container{migrate}
	injected := readDeployment(t, "testdata/inject/basic/out.yaml")
	injected.Spec.Template.Spec.InitContainers = append(injected.Spec.Template.Spec.InitContainers, migrate)
	// As a webhook before native sidecars left it: among the containers,
	// another one after it.
	older := readDeployment(t, "testdata/inject/basic/out.yaml")
	spec := &older.Spec.Template.Spec
	spec.Containers = append(spec.Containers, *sidecarOf(older), corev1.Container{Name: "cache", Image: "redis:7"})
	spec.InitContainers = nil

	for name, tc := range map[string]struct {
		object         []byte
		from, to       string
		want, wantInit []string // the containers' names after
	}{
		"added":   {future(fresh), "", "", []string{"shop"}, []string{"podtracer", "migrate"}},
		"changed": {future(injected), `"podtracer.io/inject":"true"`, `"podtracer.io/inject":"true","podtracer.io/log-level":"debug"`, []string{"shop"}, []string{"podtracer", "migrate"}},
		"removed": {future(injected), `"podtracer.io/inject":"true"`, `"podtracer.io/inject":"false"`, []string{"shop"}, []string{"migrate"}},
		"moved":   {future(older), `"podtracer.io/inject":"true"`, `"podtracer.io/inject":"true","podtracer.io/log-level":"debug"`, []string{"shop", "cache"}, []string{"podtracer"}},
	} {
		t.Run(name, func(t *testing.T) {
			obj := bytes.Replace(tc.object, []byte(tc.from), []byte(tc.to), 1)
			patched := patchedUpdate(t, h, obj)
			var got struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers     []map[string]any `json:"containers"`
							InitContainers []map[string]any `json:"initContainers"`
						} `json:"spec"`
					} `json:"template"`
				} `json:"spec"`
			}
			json.Unmarshal(patched, &got)
			names := func(list []map[string]any) string {
				var names []string
				for _, c := range list {
					name := c["name"].(string)
					names = append(names, name)
					f, ok := c["futureContainerField"]
					if want := name != ContainerName && name != "shop"; ok != want || ok && f != name+"'s" {
						t.Errorf("container %s has futureContainerField %v", name, f)
					}
				}
				return strings.Join(names, ",")
			}
			spec := got.Spec.Template.Spec
			if names(spec.Containers) != strings.Join(tc.want, ",") || names(spec.InitContainers) != strings.Join(tc.wantInit, ",") {
				t.Errorf("containers %s, init containers %s; want %v, %v", names(spec.Containers), names(spec.InitContainers), tc.want, tc.wantInit)
			}
		})
	}
}

// patchedUpdate sends obj to h as an UPDATE and returns it with the
// response's patch applied; it fails the test when there is none.
func patchedUpdate(t *testing.T, h http.Handler, obj []byte) []byte {
	t.Helper()
	rec, out := post(t, h, review(t, admissionv1.Update, obj))
	if out == nil || out.Response.Patch == nil {
		t.Fatalf("status %d, no patch: %s", rec.Code, rec.Body.String())
	}
	patch, err := jsonpatch.DecodePatch(out.Response.Patch)
	if err != nil {
		t.Fatal(err)
	}
	patched, err := patch.Apply(obj)
	if err != nil {
		t.Fatalf("apply patch: %v", err)
	}
	return patched
}
