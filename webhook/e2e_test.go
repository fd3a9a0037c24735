package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/podtracer/podtracer/internal/testenv"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

// envtestAssets is the folder with kube-apiserver, etcd and cert-manager's
// CRDs that hack/envtest-assets.sh builds: KUBEBUILDER_ASSETS, or the
// script's cache.
func envtestAssets(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		cache := os.Getenv("PODTRACER_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "podtracer")
		}
		dir = filepath.Join(cache, "envtest", "current")
	}
	for _, f := range []string{"kube-apiserver", "etcd", "crds/cert-manager.io_certificates.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			testenv.Skip(t, fmt.Sprintf("no %s in %s: run hack/envtest-assets.sh once (about 8 minutes), or set KUBEBUILDER_ASSETS", f, dir))
		}
	}
	return dir
}

// warningRecorder keeps the warnings the API server returns.
type warningRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warningRecorder) HandleWarningHeader(_ int, _ string, msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, msg)
}

func (w *warningRecorder) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

// admissions records the webhook's "deployment admitted" log lines, to see
// which requests reached it.
type admissions struct {
	mu    sync.Mutex
	lines []string
	out   slog.Handler // also log here when verbose
}

type admissionsHandler struct {
	a     *admissions
	attrs []slog.Attr
	out   slog.Handler
}

func (h admissionsHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h admissionsHandler) WithGroup(string) slog.Handler            { return h }
func (h admissionsHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return admissionsHandler{h.a, append(slices.Clone(h.attrs), as...), h.out.WithAttrs(as)}
}

func (h admissionsHandler) Handle(ctx context.Context, r slog.Record) error {
	if h.out.Enabled(ctx, r.Level) {
		h.out.Handle(ctx, r)
	}
	if r.Message != "deployment admitted" {
		return nil
	}
	m := map[string]string{}
	for _, a := range h.attrs {
		m[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	h.a.mu.Lock()
	defer h.a.mu.Unlock()
	h.a.lines = append(h.a.lines, fmt.Sprintf("%s/%s %s %s", m["namespace"], m["name"], m["operation"], m["action"]))
	return nil
}

func (a *admissions) of(namespace, name string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, l := range a.lines {
		if strings.HasPrefix(l, namespace+"/"+name+" ") {
			out = append(out, l)
		}
	}
	return out
}

// readObjects splits a multi-document YAML file into objects.
func readObjects(t *testing.T, r io.Reader) []*unstructured.Unstructured {
	t.Helper()
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs
			}
			t.Fatal(err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// applyObjects creates Namespaces for real and everything else as a
// server-side dry run: the API server validates it all, the test cluster
// stays clean.
func applyObjects(t *testing.T, ctx context.Context, c client.Client, objs []*unstructured.Unstructured) {
	t.Helper()
	for _, u := range objs {
		what := fmt.Sprintf("%s %s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
		var err error
		if u.GetKind() == "Namespace" {
			err = c.Create(ctx, u)
			if apierrors.IsAlreadyExists(err) {
				err = nil
			}
		} else {
			err = c.Create(ctx, u, client.DryRunAll)
		}
		if err != nil {
			t.Errorf("%s not accepted: %v", what, err)
		}
	}
}

func appDeployment(name string, annotations map[string]string) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: name, Image: "ghcr.io/example/" + name + ":1.0.0",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
				}}},
			},
		},
	}
}

// sidecarOf is d's podtracer container: a native sidecar, among the init
// containers.
func sidecarOf(d *appsv1.Deployment) *corev1.Container {
	for i, c := range d.Spec.Template.Spec.InitContainers {
		if c.Name == ContainerName {
			return &d.Spec.Template.Spec.InitContainers[i]
		}
	}
	return nil
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestEndToEnd runs a real kube-apiserver and etcd, checks that everything
// in examples/ and every golden output is accepted, then runs `podtracer
// webhook` (Main), registers it with the MutatingWebhookConfiguration from
// examples/webhook, and reads back what the API server stores as
// Deployments are created, annotated and un-annotated.
func TestEndToEnd(t *testing.T) {
	assets := envtestAssets(t)
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(assets, "crds")},
		ErrorIfCRDPathMissing: true,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start kube-apiserver and etcd from %s: %v", assets, err)
	}
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Errorf("stop control plane: %v", err)
		}
	})
	warnings := &warningRecorder{}
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = warnings
	cs := kubernetes.NewForConfigOrDie(cfg)
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, ns := range []string{"shop", "monitoring", "jobs"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("golden outputs are valid Deployments", func(t *testing.T) {
		paths, _ := filepath.Glob("testdata/inject/*/out.yaml")
		for _, p := range paths {
			d := readDeployment(t, p)
			if _, err := cs.AppsV1().Deployments(d.Namespace).Create(ctx, d, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("%s: %v", p, err)
			}
		}
	})

	t.Run("examples are accepted", func(t *testing.T) {
		paths, _ := filepath.Glob("../examples/*/*.yaml")
		if len(paths) < 4 {
			t.Fatalf("examples: %v", paths)
		}
		for _, p := range paths {
			f, err := os.Open(p)
			if err != nil {
				t.Fatal(err)
			}
			objs := readObjects(t, f)
			f.Close()
			t.Logf("%s: %d objects", p, len(objs))
			applyObjects(t, ctx, c, objs)
		}
	})

	t.Run("self-signed.sh", func(t *testing.T) {
		testenv.LookPath(t, "openssl")
		out, err := exec.CommandContext(ctx, testenv.LookPath(t, "bash"), "../examples/webhook/self-signed.sh").Output()
		if err != nil {
			t.Fatalf("self-signed.sh: %v", err)
		}
		objs := readObjects(t, bytes.NewReader(out))
		if len(objs) != 2 || objs[0].GetKind() != "Secret" || objs[1].GetKind() != "MutatingWebhookConfiguration" {
			t.Fatalf("want a Secret and a MutatingWebhookConfiguration, got %d objects", len(objs))
		}
		applyObjects(t, ctx, c, objs)

		// The certificate is valid for the Service, its key matches, and
		// the caBundle in the configuration is what signed it.
		var secret corev1.Secret
		var mwc admissionregistrationv1.MutatingWebhookConfiguration
		fromUnstructured(t, objs[0], &secret)
		fromUnstructured(t, objs[1], &mwc)
		pair, err := tls.X509KeyPair(secret.Data["tls.crt"], secret.Data["tls.key"])
		if err != nil {
			t.Fatalf("key pair: %v", err)
		}
		leaf, _ := x509.ParseCertificate(pair.Certificate[0])
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(mwc.Webhooks[0].ClientConfig.CABundle) {
			t.Fatal("caBundle is not PEM")
		}
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "podtracer-webhook.podtracer-system.svc", Roots: roots}); err != nil {
			t.Errorf("certificate does not verify for the Service: %v", err)
		}
		if _, ok := mwc.Annotations["cert-manager.io/inject-ca-from"]; ok {
			t.Error("self-signed configuration still asks cert-manager for its CA")
		}
	})

	// Run the webhook as podtracer-webhook does, configured by env.
	certDir := t.TempDir()
	cert := newTestCert(t, "127.0.0.1")
	certFile, keyFile := cert.write(t, certDir)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	t.Setenv("PODTRACER_WEBHOOK_ADDR", addr)
	t.Setenv("PODTRACER_WEBHOOK_TLS_CERT", certFile)
	t.Setenv("PODTRACER_WEBHOOK_TLS_KEY", keyFile)
	t.Setenv("PODTRACER_WEBHOOK_IMAGE", "ghcr.io/podtracer/podtracer:v0.1.0")
	t.Setenv("PODTRACER_WEBHOOK_OTLP_ENDPOINT", "http://otel-collector.observability:4317")
	conf, err := LoadConfig(os.Environ())
	if err != nil {
		t.Fatal(err)
	}
	calls := &admissions{}
	logger := slog.New(admissionsHandler{a: calls, out: testLogger(t).Handler()})
	whCtx, stopWebhook := context.WithCancel(ctx)
	defer stopWebhook()
	webhookDone := make(chan error, 1)
	go func() { webhookDone <- Main(whCtx, logger, nil) }()
	waitReady(t, "https://"+addr+"/readyz", cert)

	// Register it with the configuration from examples/, pointed at the
	// test's address instead of the in-cluster Service.
	mwc := readWebhookConfiguration(t)
	for i := range mwc.Webhooks {
		mwc.Webhooks[i].ClientConfig = admissionregistrationv1.WebhookClientConfig{
			URL: new("https://" + addr + "/mutate"), CABundle: cert.caPEM,
		}
	}
	if _, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deployments := cs.AppsV1().Deployments("shop")
	waitFor(t, "the API server to call the webhook", func() bool {
		d, err := deployments.Create(ctx, appDeployment("probe", map[string]string{AnnotationInject: "true"}), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err == nil && sidecarOf(d) != nil
	})
	sidecar := conf.Sidecar()
	get := func(name string) *appsv1.Deployment {
		t.Helper()
		d, err := deployments.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	annotate := func(name, value string) *appsv1.Deployment {
		t.Helper()
		v := "null"
		if value != "" {
			v = fmt.Sprintf("%q", value)
		}
		// What `kubectl annotate deployment/NAME podtracer.io/inject=VALUE` sends.
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%s}}}`, AnnotationInject, v)
		d, err := deployments.Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	t.Run("annotated Deployment is injected", func(t *testing.T) {
		d, err := deployments.Create(ctx, appDeployment("annotated", map[string]string{AnnotationInject: "true"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		stored := get("annotated")
		s := sidecarOf(stored)
		if s == nil {
			t.Fatalf("no sidecar stored: %s", deploymentYAML(t, d))
		}
		spec := stored.Spec.Template.Spec
		if spec.ShareProcessNamespace == nil || !*spec.ShareProcessNamespace {
			t.Error("shareProcessNamespace not set")
		}
		if _, ok := stored.Spec.Template.Annotations[AnnotationStatus]; !ok {
			t.Error("no status annotation")
		}
		if got := envValue(*s, "OTEL_SERVICE_NAME"); got != "annotated" {
			t.Errorf("OTEL_SERVICE_NAME = %q", got)
		}
		if got := envValue(*s, "OTEL_EXPORTER_OTLP_ENDPOINT"); got != "http://otel-collector.observability:4317" {
			t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT = %q", got)
		}
		// After the API server's defaulting, the stored Deployment is a
		// fixed point of Mutate: later updates produce no patch.
		if res := Mutate(stored, sidecar); res.Action != ActionNone {
			t.Errorf("Mutate of the stored Deployment: %s\n%s", res.Action, diff(deploymentYAML(t, stored), deploymentYAML(t, res.Deployment)))
		}
	})

	t.Run("unannotated Deployment is left alone, then annotated, then not", func(t *testing.T) {
		if _, err := deployments.Create(ctx, appDeployment("plain", nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		original := get("plain")
		if sidecarOf(original) != nil {
			t.Fatal("unannotated Deployment injected")
		}
		if got := calls.of("shop", "plain"); len(got) != 0 {
			t.Errorf("matchConditions should keep unannotated Deployments from the webhook, got calls %q", got)
		}

		injected := annotate("plain", "true")
		if sidecarOf(injected) == nil {
			t.Fatal("not injected after kubectl annotate")
		}

		// An unrelated update changes nothing in the pod template, so the
		// pods do not roll.
		scaled, err := deployments.Patch(ctx, "plain", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !equality.Semantic.DeepEqual(injected.Spec.Template, scaled.Spec.Template) {
			t.Errorf("update changed the template:\n%s", diff(deploymentYAML(t, injected), deploymentYAML(t, scaled)))
		}

		for _, value := range []string{"false", ""} {
			annotate("plain", "true")
			removed := annotate("plain", value)
			if !equality.Semantic.DeepEqual(original.Spec.Template, removed.Spec.Template) {
				t.Errorf("inject=%q: template is not back to the original:\n%s", value, diff(deploymentYAML(t, original), deploymentYAML(t, removed)))
			}
		}
		t.Logf("webhook calls: %q", calls.of("shop", "plain"))
	})

	t.Run("generateName: later updates keep the sidecar", func(t *testing.T) {
		d := appDeployment("batch", map[string]string{AnnotationInject: "true"})
		d.Name, d.GenerateName = "", "batch-"
		created, err := deployments.Create(ctx, d, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := sidecarOf(created)
		if s == nil {
			t.Fatal("not injected")
		}
		t.Logf("created %s, OTEL_SERVICE_NAME %q", created.Name, envValue(*s, "OTEL_SERVICE_NAME"))
		if got := envValue(*s, "OTEL_SERVICE_NAME"); got != "batch" {
			t.Errorf("OTEL_SERVICE_NAME = %q, want the prefix, batch", got)
		}
		// An update of another field must not change the template: that
		// would roll the pods.
		scaled, err := deployments.Patch(ctx, created.Name, types.MergePatchType, []byte(`{"spec":{"replicas":2}}`), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !equality.Semantic.DeepEqual(created.Spec.Template, scaled.Spec.Template) {
			t.Errorf("update changed the template:\n%s", diff(deploymentYAML(t, created), deploymentYAML(t, scaled)))
		}
	})

	t.Run("pod-level resources: the sidecar shares them", func(t *testing.T) {
		d := appDeployment("budget", map[string]string{AnnotationInject: "true"})
		spec := &d.Spec.Template.Spec
		spec.Resources = &corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		}
		spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}
		warnings.take()
		created, err := deployments.Create(ctx, d, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		s := sidecarOf(created)
		if s == nil {
			t.Fatal("not injected")
		}
		if len(s.Resources.Requests) > 0 || len(s.Resources.Limits) > 0 {
			t.Errorf("sidecar has resources of its own in a pod with pod-level resources: %v", s.Resources)
		}
		if w := warnings.take(); !slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, "pod-level resources") }) {
			t.Errorf("warnings %q do not mention pod-level resources", w)
		}
	})

	t.Run("Deployment that cannot be injected is allowed with a warning", func(t *testing.T) {
		d := appDeployment("host-pid", map[string]string{AnnotationInject: "true"})
		d.Spec.Template.Spec.HostPID = true
		warnings.take()
		created, err := deployments.Create(ctx, d, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("refused: %v", err)
		}
		if sidecarOf(created) != nil {
			t.Error("injected into a hostPID pod")
		}
		if w := warnings.take(); !slices.ContainsFunc(w, func(s string) bool { return strings.Contains(s, "hostPID") }) {
			t.Errorf("warnings %q do not mention hostPID", w)
		}
	})

	t.Run("selectors skip kube-system and the webhook itself", func(t *testing.T) {
		d := appDeployment("system", map[string]string{AnnotationInject: "true"})
		d, err := cs.AppsV1().Deployments("kube-system").Create(ctx, d, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sidecarOf(d) != nil {
			t.Error("injected in kube-system")
		}
		self := appDeployment("self", map[string]string{AnnotationInject: "true"})
		self.Labels = map[string]string{"app.kubernetes.io/name": "podtracer-webhook"}
		self, err = deployments.Create(ctx, self, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sidecarOf(self) != nil {
			t.Error("webhook's own Deployment injected")
		}
		// A namespace where Pod Security enforces restricted would refuse
		// the sidecar's pods: not injected there, while it would be in an
		// audited one.
		for level, want := range map[string]bool{"restricted": false, "baseline": false, "privileged": true} {
			ns := "psa-" + level
			labels := map[string]string{"pod-security.kubernetes.io/enforce": level}
			if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			d, err := cs.AppsV1().Deployments(ns).Create(ctx, appDeployment("app", map[string]string{AnnotationInject: "true"}), metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := sidecarOf(d) != nil; got != want {
				t.Errorf("enforce=%s: injected %v, want %v", level, got, want)
			}
		}
	})

	t.Run("webhook down: Deployments are admitted without the sidecar", func(t *testing.T) {
		stopWebhook()
		select {
		case err := <-webhookDone:
			if err != nil {
				t.Fatalf("webhook.Main: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("webhook did not stop")
		}
		start := time.Now()
		d, err := deployments.Create(ctx, appDeployment("while-down", map[string]string{AnnotationInject: "true"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("refused while the webhook is down: %v", err)
		}
		if sidecarOf(d) != nil {
			t.Error("injected without a webhook?")
		}
		t.Logf("admitted in %s", time.Since(start).Round(time.Millisecond))
	})
}

func fromUnstructured(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	b, err := u.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatal(err)
	}
}

func readWebhookConfiguration(t *testing.T) *admissionregistrationv1.MutatingWebhookConfiguration {
	t.Helper()
	b, err := os.ReadFile("../examples/webhook/30-mutatingwebhookconfiguration.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.UnmarshalStrict(b, &mwc); err != nil {
		t.Fatal(err)
	}
	return &mwc
}

func waitReady(t *testing.T, url string, cert testCert) {
	t.Helper()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cert.pool(t)}}}
	waitFor(t, "the webhook to be ready", func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
