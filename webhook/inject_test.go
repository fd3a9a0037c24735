package webhook

import (
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podtracer/podtracer/exporter"
	"github.com/podtracer/podtracer/pod"
	"github.com/podtracer/podtracer/tracer"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/inject")

const goldenHeader = "# Generated from in.yaml by `go test ./webhook -run TestMutateGolden -update`.\n"

// goldenSidecar is the webhook configuration every golden case uses.
func goldenSidecar() Sidecar {
	return Sidecar{
		Image:        "ghcr.io/podtracer/podtracer:v0.1.0",
		OTLPEndpoint: "http://otel-collector.observability:4317",
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
		},
	}
}

func readDeployment(t *testing.T, path string) *appsv1.Deployment {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var d appsv1.Deployment
	if err := yaml.UnmarshalStrict(b, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &d
}

func deploymentYAML(t *testing.T, d *appsv1.Deployment) string {
	t.Helper()
	b, err := yaml.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func resultText(r Result) string {
	var b strings.Builder
	b.WriteString("action: " + string(r.Action) + "\n")
	for _, w := range r.Warnings {
		b.WriteString("warning: " + w + "\n")
	}
	return b.String()
}

// golden compares got with the file, or rewrites the file under -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := diff(string(want), got); diff != "" {
		t.Errorf("%s differs (-want +got; -update rewrites it):\n%s", path, diff)
	}
}

// withoutInject deletes the inject annotation everywhere: what a user does
// to take the sidecar out.
func withoutInject(d *appsv1.Deployment) *appsv1.Deployment {
	d = d.DeepCopy()
	delete(d.Annotations, AnnotationInject)
	delete(d.Spec.Template.Annotations, AnnotationInject)
	if len(d.Annotations) == 0 {
		d.Annotations = nil
	}
	if len(d.Spec.Template.Annotations) == 0 {
		d.Spec.Template.Annotations = nil
	}
	return d
}

func TestMutateGolden(t *testing.T) {
	dirs, err := filepath.Glob("testdata/inject/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			in := readDeployment(t, filepath.Join(dir, "in.yaml"))
			pristine := in.DeepCopy()

			res := Mutate(in, goldenSidecar())
			if !equality.Semantic.DeepEqual(in, pristine) {
				t.Fatal("Mutate modified its input")
			}
			golden(t, filepath.Join(dir, "out.yaml"), goldenHeader+deploymentYAML(t, res.Deployment))
			golden(t, filepath.Join(dir, "result.txt"), resultText(res))
			if *update {
				return
			}
			out := readDeployment(t, filepath.Join(dir, "out.yaml"))

			t.Run("idempotent", func(t *testing.T) {
				again := Mutate(out, goldenSidecar())
				if diff := diff(deploymentYAML(t, out), deploymentYAML(t, again.Deployment)); diff != "" {
					t.Errorf("second pass changed the Deployment (-first +second):\n%s", diff)
				}
				if again.Action == ActionInjected || again.Action == ActionRemoved {
					t.Errorf("second pass action = %s, want none or skipped", again.Action)
				}
			})

			// Removal is exact: without the annotation, the injected
			// Deployment goes back to what it was before injection.
			if _, injected := out.Spec.Template.Annotations[AnnotationStatus]; !injected {
				return
			}
			if _, preInjected := in.Spec.Template.Annotations[AnnotationStatus]; preInjected || sidecarOf(in) != nil {
				return // the input was injected already: no pristine original
			}
			for name, mark := range map[string]func(*appsv1.Deployment) *appsv1.Deployment{
				"annotation removed": withoutInject,
				"annotation false": func(d *appsv1.Deployment) *appsv1.Deployment {
					d = withoutInject(d)
					if d.Annotations == nil {
						d.Annotations = map[string]string{}
					}
					d.Annotations[AnnotationInject] = "false"
					return d
				},
			} {
				t.Run("removal/"+name, func(t *testing.T) {
					removed := Mutate(mark(out), goldenSidecar())
					if removed.Action != ActionRemoved {
						t.Errorf("action = %s, want %s", removed.Action, ActionRemoved)
					}
					if diff := diff(deploymentYAML(t, mark(in)), deploymentYAML(t, removed.Deployment)); diff != "" {
						t.Errorf("removal is not exact (-original +removed):\n%s", diff)
					}
				})
			}
		})
	}
}

// TestMutateFollowsConfiguration: a Deployment injected by an older webhook
// (another image, other settings) is brought up to date by its next update.
func TestMutateFollowsConfiguration(t *testing.T) {
	in := readDeployment(t, "testdata/inject/basic/in.yaml")
	old := goldenSidecar()
	old.Image = "ghcr.io/podtracer/podtracer:v0.0.9"
	old.OTLPEndpoint = ""
	first := Mutate(in, old)

	second := Mutate(first.Deployment, goldenSidecar())
	if second.Action != ActionInjected {
		t.Fatalf("action = %s, want injected", second.Action)
	}
	want := Mutate(in, goldenSidecar())
	if diff := diff(deploymentYAML(t, want.Deployment), deploymentYAML(t, second.Deployment)); diff != "" {
		t.Errorf("re-injection differs from a fresh injection (-fresh +re-injected):\n%s", diff)
	}

	// A new annotation changes the sidecar's env.
	annotated := second.Deployment.DeepCopy()
	annotated.Annotations["podtracer.io/open-ports"] = "8080"
	third := Mutate(annotated, goldenSidecar())
	if third.Action != ActionInjected {
		t.Fatalf("action = %s, want injected", third.Action)
	}
	if got := envValue(*sidecarOf(third.Deployment), "PODTRACER_OPEN_PORTS"); got != "8080" {
		t.Errorf("PODTRACER_OPEN_PORTS = %q, want 8080", got)
	}
}

// TestMutateConflictAfterInjection: when the pod stops fitting (the user
// sets shareProcessNamespace: false), the earlier injection is taken out.
func TestMutateConflictAfterInjection(t *testing.T) {
	in := readDeployment(t, "testdata/inject/basic/in.yaml")
	injected := Mutate(in, goldenSidecar()).Deployment
	injected.Spec.Template.Spec.ShareProcessNamespace = new(false)
	res := Mutate(injected, goldenSidecar())
	if res.Action != ActionRemoved || len(res.Warnings) == 0 {
		t.Fatalf("action %s warnings %q, want removed with a warning", res.Action, res.Warnings)
	}
	want := in.DeepCopy()
	want.Spec.Template.Spec.ShareProcessNamespace = new(false)
	if diff := diff(deploymentYAML(t, want), deploymentYAML(t, res.Deployment)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestMutateBadSettingKeepsInjection: a typo in an annotation leaves an
// injected Deployment as it was, instead of taking the sidecar out.
func TestMutateBadSettingKeepsInjection(t *testing.T) {
	in := readDeployment(t, "testdata/inject/basic/in.yaml")
	injected := Mutate(in, goldenSidecar()).Deployment
	injected.Annotations["podtracer.io/open-ports"] = "http"
	res := Mutate(injected, goldenSidecar())
	if res.Action != ActionSkipped || !equality.Semantic.DeepEqual(res.Deployment, injected) {
		t.Fatalf("action %s, changed %v: want skipped and unchanged", res.Action, !equality.Semantic.DeepEqual(res.Deployment, injected))
	}
}

func envValue(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func TestPullPolicy(t *testing.T) {
	for image, want := range map[string]corev1.PullPolicy{
		"podtracer":                          corev1.PullAlways,
		"podtracer:latest":                   corev1.PullAlways,
		"registry:5000/podtracer":            corev1.PullAlways,
		"registry:5000/podtracer:v1":         corev1.PullIfNotPresent,
		"ghcr.io/podtracer/podtracer:v0.1.0": corev1.PullIfNotPresent,
		"ghcr.io/podtracer/podtracer@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": corev1.PullIfNotPresent,
	} {
		if got := pullPolicy(Sidecar{Image: image}); got != want {
			t.Errorf("pullPolicy(%q) = %s, want %s", image, got, want)
		}
	}
	if got := pullPolicy(Sidecar{Image: "podtracer", ImagePullPolicy: corev1.PullNever}); got != corev1.PullNever {
		t.Errorf("configured policy not used: %s", got)
	}
}

func TestSettingChecks(t *testing.T) {
	good := map[string][]string{
		"podtracer.io/open-ports":             {"8080", "8080,9000-9100", " 80 , 443 ", "1-65535"},
		"podtracer.io/otlp-endpoint":          {"http://c:4317", "https://collector.observability.svc.cluster.local:4317"},
		"podtracer.io/sampler-arg":            {"0", "0.5", "1"},
		"podtracer.io/metric-export-interval": {"1", "60000"},
		"podtracer.io/resource-attributes":    {"a=b", "a=b,c=d=e", "team=", "team=a%20b"},
		"podtracer.io/executable-name":        {"^java$", "python3?"},
	}
	bad := map[string][]string{
		"podtracer.io/open-ports":             {"", "http", "0", "65536", "9100-9000", "80,", "-80", "80-"},
		"podtracer.io/otlp-endpoint":          {"", "collector:4317", "grpc://c:4317", "http://"},
		"podtracer.io/sampler-arg":            {"", "1.5", "-0.1", "half"},
		"podtracer.io/metric-export-interval": {"", "0", "1s", "-5"},
		"podtracer.io/resource-attributes":    {"a", "=b", "a=b,", "a=%zz"},
		"podtracer.io/executable-name":        {"", "(java"},
		"podtracer.io/trace-printer":          {"TEXT", "yaml"},
		"podtracer.io/log-level":              {"trace"},
		"podtracer.io/otlp-insecure":          {"yes"},
	}
	for key, values := range good {
		for _, v := range values {
			if err := settingByAnnotation[key].check(strings.TrimSpace(v)); err != nil {
				t.Errorf("%s=%q: %v", key, v, err)
			}
		}
	}
	for key, values := range bad {
		for _, v := range values {
			if err := settingByAnnotation[key].check(strings.TrimSpace(v)); err == nil {
				t.Errorf("%s=%q accepted", key, v)
			}
		}
	}
}

// TestOpenPortsAgreesWithAgent: the webhook never passes a value that the
// agent's own parser rejects (it may reject more: an empty item is likelier
// a typo in an annotation).
func TestOpenPortsAgreesWithAgent(t *testing.T) {
	for _, v := range []string{"8080", "8080,9000-9100", " 80 , 443 ", "1-65535", "65535", "0", "65536",
		"9100-9000", "80,", ",80", "-80", "80-", "http", "80-90-100", "+80", "0x50", "80 443", "", "1-1"} {
		_, agentErr := pod.ParsePorts(v)
		webhookErr := checkPorts(strings.TrimSpace(v))
		if agentErr != nil && webhookErr == nil {
			t.Errorf("%q: the agent rejects it (%v), the webhook accepts it", v, agentErr)
		}
		if agentErr == nil && webhookErr == nil {
			if _, err := pod.ParsePorts(removeSpaces(v)); err != nil {
				t.Errorf("%q cleaned to %q: the agent rejects it: %v", v, removeSpaces(v), err)
			}
		}
	}
}

// The webhook never hands the sidecar a value (as it cleans it) that the
// agent refuses at start: a crash-looping sidecar makes the pod not ready.
func TestSettingsAgreeWithAgent(t *testing.T) {
	for _, tc := range []struct {
		annotation string
		values     []string
		env        map[string]string // what else the sidecar has
	}{
		{"podtracer.io/otlp-insecure", []string{"true", "TRUE", "1", "t", "false", "0", "F", "yes", ""}, nil},
		{"podtracer.io/sampler", []string{"always_on", "traceidratio", "parentbased_always_off", "TraceIDRatio", "ratio", ""}, nil},
		{"podtracer.io/sampler-arg", []string{"0", "0.5", "1", "1e-3", "NaN", "Inf", "-0", "0x1p-2", "1.5", ""},
			map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio"}},
		{"podtracer.io/metric-export-interval", []string{"1", "60000", "9223372036854", "9223372036854775", "9223372036854776", "9223372036854775807", "0", ""}, nil},
	} {
		st := settingByAnnotation[tc.annotation]
		for _, v := range tc.values {
			if st.check(v) != nil {
				continue
			}
			if st.clean != nil {
				v = st.clean(v)
			}
			env := map[string]string{st.Env: v}
			for k, v := range tc.env {
				env[k] = v
			}
			if errs := exporter.CheckEnv(func(k string) string { return env[k] }); len(errs) > 0 {
				t.Errorf("%s=%q: the webhook passes %s=%q, the agent refuses it: %v", tc.annotation, v, st.Env, v, errs)
			}
		}
	}
	if got := cleanInsecure("1"); got != "true" {
		t.Errorf("PODTRACER_WEBHOOK_OTLP_INSECURE=1 becomes %q, want true", got)
	}
}

// The webhook knows the agent's opt-in attributes, and no others, and
// passes only lists the agent takes.
func TestOptInAgreesWithAgent(t *testing.T) {
	if !slices.Equal(optInAttributes, exporter.OptInNames()) {
		t.Errorf("webhook's opt-in attributes %v, the agent's %v", optInAttributes, exporter.OptInNames())
	}
	for v, ok := range map[string]bool{"client.port": true, " url.scheme , user_agent.original ": true, "client.port,": true, ",": false, "": false,
		"Client.Port": false, "network.transport": false} {
		err := checkOptIn(v)
		if (err == nil) != ok {
			t.Errorf("podtracer.io/opt-in-attributes=%q: %v", v, err)
		}
		if err == nil {
			if _, err := exporter.ParseOptIn(removeSpaces(v)); err != nil {
				t.Errorf("%q: the webhook passes it, the agent refuses it: %v", v, err)
			}
		}
	}
}

// The webhook knows the agent's protocols, and no others.
func TestProtocolsAgreeWithAgent(t *testing.T) {
	if !slices.Equal(protocols, tracer.Protocols()) {
		t.Errorf("webhook's protocols %v, the agent's %v", protocols, tracer.Protocols())
	}
	for v, ok := range map[string]bool{"http,redis": true, " HTTP , Redis ": true, "http,": true, ",": false, "": false, "grpc": false, "http,smtp": false} {
		if err := checkProtocols(v); (err == nil) != ok {
			t.Errorf("podtracer.io/protocols=%q: %v", v, err)
		}
	}
	if got := cleanProtocols(" HTTP , Redis "); got != "http,redis" {
		t.Errorf("cleaned to %q", got)
	}
	for v, ok := range map[string]bool{"4096": true, "1048576": true, "1073741824": true, "2048": false, "3000000": false, "2147483648": false, "-4096": false, "1MiB": false} {
		if err := checkRingBuffer(v); (err == nil) != ok {
			t.Errorf("podtracer.io/ring-buffer-bytes=%q: %v", v, err)
		}
	}
}

// TestMutateStatusNamesOtherContainer: removal takes out only what the
// webhook adds, even when the status annotation was edited to name
// another container.
func TestMutateStatusNamesOtherContainer(t *testing.T) {
	in := readDeployment(t, "testdata/inject/basic/in.yaml")
	injected := Mutate(in, goldenSidecar()).Deployment
	app := injected.Spec.Template.Spec.Containers[0].Name
	injected.Spec.Template.Annotations[AnnotationStatus] = `{"container":"` + app + `"}`
	res := Mutate(withoutInject(injected), goldenSidecar())
	if res.Action != ActionRemoved || len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], app) {
		t.Fatalf("action %s warnings %q, want removed with a warning naming %q", res.Action, res.Warnings, app)
	}
	var names []string
	for _, c := range res.Deployment.Spec.Template.Spec.Containers {
		names = append(names, c.Name)
	}
	if len(names) != 1 || names[0] != app || len(res.Deployment.Spec.Template.Spec.InitContainers) > 0 {
		t.Errorf("containers %v, init containers %v after removal, want only %q", names, res.Deployment.Spec.Template.Spec.InitContainers, app)
	}
}

// TestMutateGenerateNameStable: a Deployment created with generateName is
// named by its prefix at CREATE and on every later update, when it has
// its generated name: an update must not change the sidecar and roll the
// pods (checked against the API server in TestEndToEnd).
func TestMutateGenerateNameStable(t *testing.T) {
	in := readDeployment(t, "testdata/inject/generate-name/in.yaml")
	created := Mutate(in, goldenSidecar())
	if created.Action != ActionInjected {
		t.Fatalf("action %s", created.Action)
	}
	stored := created.Deployment.DeepCopy()
	stored.Name = "batch-x7k2p"
	if res := Mutate(stored, goldenSidecar()); res.Action != ActionNone {
		t.Errorf("update of the generated Deployment: %s\n%s", res.Action, diff(deploymentYAML(t, stored), deploymentYAML(t, res.Deployment)))
	}
	// A name given with a prefix that it does not start with is the name.
	named := in.DeepCopy()
	named.Name = "nightly"
	if got := envValue(*sidecarOf(Mutate(named, goldenSidecar()).Deployment), "OTEL_SERVICE_NAME"); got != "nightly" {
		t.Errorf("OTEL_SERVICE_NAME = %q, want nightly", got)
	}
}

// TestMutateInsecureGoesWithItsEndpoint: the webhook's
// OTEL_EXPORTER_OTLP_INSECURE=true is for its own (in-cluster) endpoint; a
// Deployment that names its own https:// endpoint is not sent plaintext,
// unless it asks for that too.
func TestMutateInsecureGoesWithItsEndpoint(t *testing.T) {
	s := goldenSidecar()
	s.OTLPInsecure = "true"
	for _, c := range []struct {
		annotations map[string]string
		want        string
	}{
		{nil, "true"},
		{map[string]string{"podtracer.io/otlp-endpoint": "https://otlp.vendor.example:443"}, ""},
		{map[string]string{"podtracer.io/otlp-endpoint": "https://otlp.vendor.example:443", "podtracer.io/otlp-insecure": "true"}, "true"},
	} {
		d := readDeployment(t, "testdata/inject/basic/in.yaml")
		maps.Copy(d.Annotations, c.annotations)
		res := Mutate(d, s)
		if got := envValue(*sidecarOf(res.Deployment), "OTEL_EXPORTER_OTLP_INSECURE"); got != c.want {
			t.Errorf("%v: OTEL_EXPORTER_OTLP_INSECURE = %q, want %q", c.annotations, got, c.want)
		}
	}
	// The webhook's TLS even to http:// holds for a Deployment's own
	// endpoint too.
	s.OTLPInsecure = "false"
	d := readDeployment(t, "testdata/inject/basic/in.yaml")
	d.Annotations["podtracer.io/otlp-endpoint"] = "http://collector.shop:4317"
	if got := envValue(*sidecarOf(Mutate(d, s).Deployment), "OTEL_EXPORTER_OTLP_INSECURE"); got != "false" {
		t.Errorf("webhook's insecure=false with an annotated endpoint: %q, want false", got)
	}
}

// TestMutateShutdownWait: the native sidecar gets SIGTERM once the pod's
// containers have ended, so it does not wait for them to drain; an
// annotation wins.
func TestMutateShutdownWait(t *testing.T) {
	for annotation, want := range map[string]string{"": "0s", "3s": "3s"} {
		d := readDeployment(t, "testdata/inject/basic/in.yaml")
		if annotation != "" {
			d.Annotations["podtracer.io/shutdown-wait"] = annotation
		}
		if got := envValue(*sidecarOf(Mutate(d, goldenSidecar()).Deployment), "PODTRACER_SHUTDOWN_WAIT"); got != want {
			t.Errorf("annotation %q: PODTRACER_SHUTDOWN_WAIT=%q, want %q", annotation, got, want)
		}
	}
}

// What a user adds to the injected sidecar (a variable the webhook does
// not write, from a Secret; envFrom; a mounted CA) survives the next
// update; what the webhook writes is written again, with warnings that
// name the annotation to use instead; and the result is stable.
func TestMutateKeepsUsersAdditions(t *testing.T) {
	in := readDeployment(t, "testdata/inject/basic/in.yaml")
	injected := Mutate(in, goldenSidecar()).Deployment
	spec := &injected.Spec.Template.Spec
	i := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == ContainerName })
	c := &spec.InitContainers[i]
	headers := corev1.EnvVar{Name: "OTEL_EXPORTER_OTLP_HEADERS", ValueFrom: &corev1.EnvVarSource{
		SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "vendor"}, Key: "headers"}}}
	c.Env = append(c.Env, headers, corev1.EnvVar{Name: "PODTRACER_LOG_LEVEL", Value: "debug"})
	c.EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "tuning"}}}}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "ca", MountPath: "/etc/ca", ReadOnly: true}}
	c.Resources.Limits[corev1.ResourceCPU] = resource.MustParse("2")
	c.Lifecycle.PostStart.Exec.Command = []string{"/podtracer", "wait", "-timeout", "60s"}

	res := Mutate(injected, goldenSidecar())
	got := res.Deployment.Spec.Template.Spec.InitContainers[i]
	if !slices.ContainsFunc(got.Env, func(e corev1.EnvVar) bool { return equality.Semantic.DeepEqual(e, headers) }) {
		t.Errorf("the user's %s was dropped: %v", headers.Name, got.Env)
	}
	if envValue(got, "PODTRACER_LOG_LEVEL") != "" {
		t.Errorf("PODTRACER_LOG_LEVEL kept on the sidecar; the webhook writes it from podtracer.io/log-level")
	}
	if len(got.EnvFrom) != 1 || len(got.VolumeMounts) != 1 {
		t.Errorf("envFrom %v, volumeMounts %v: want the user's", got.EnvFrom, got.VolumeMounts)
	}
	if !equality.Semantic.DeepEqual(got.Lifecycle, waitHook()) {
		t.Errorf("lifecycle %+v, want the webhook's hook back", got.Lifecycle)
	}
	if lim := got.Resources.Limits[corev1.ResourceCPU]; lim.String() != "500m" {
		t.Errorf("CPU limit %s, want the webhook's 500m", lim.String())
	}
	want := []string{
		"the podtracer container's PODTRACER_LOG_LEVEL is the webhook's: the edit is undone; set it with annotation podtracer.io/log-level",
		"the podtracer container's lifecycle and restartPolicy are the webhook's: the edit is undone",
		"the podtracer container's resources are the webhook's: the edit is undone; set them with annotations podtracer.io/cpu-request, cpu-limit, memory-request and memory-limit",
	}
	if !slices.Equal(res.Warnings, want) {
		t.Errorf("warnings %q, want %q", res.Warnings, want)
	}
	again := Mutate(res.Deployment, goldenSidecar())
	if again.Action != ActionNone || len(again.Warnings) > 0 {
		t.Errorf("second pass: action %s warnings %q, want none", again.Action, again.Warnings)
	}
	// What the annotations and the webhook's settings change is no edit:
	// no warning.
	annotated := res.Deployment.DeepCopy()
	annotated.Annotations["podtracer.io/log-level"] = "debug"
	annotated.Annotations["podtracer.io/cpu-limit"] = "1"
	reconfigured := goldenSidecar()
	reconfigured.OTLPEndpoint = "http://other-collector:4317"
	changed := Mutate(annotated, reconfigured)
	if changed.Action != ActionInjected || len(changed.Warnings) > 0 {
		t.Errorf("annotations and settings changed: action %s warnings %q, want injected without any", changed.Action, changed.Warnings)
	}
	removed := Mutate(withoutInject(res.Deployment), goldenSidecar())
	if spec := removed.Deployment.Spec.Template.Spec; removed.Action != ActionRemoved || len(spec.Containers) != 1 || len(spec.InitContainers) > 0 {
		t.Errorf("removal: action %s, %d containers, %d init containers", removed.Action, len(spec.Containers), len(spec.InitContainers))
	}
}

// Resource annotations the API server would refuse, or keep otherwise
// than written, leave the Deployment unchanged with a warning.
func TestMutateBadResources(t *testing.T) {
	for _, a := range []map[string]string{
		{"podtracer.io/cpu-limit": "two"},
		{"podtracer.io/cpu-limit": "-1"},
		{"podtracer.io/cpu-request": "500u"},
		{"podtracer.io/memory-request": "0.5"},
		{"podtracer.io/cpu-request": "1"}, // above the webhook's 500m limit
		{"podtracer.io/memory-request": "1Gi", "podtracer.io/memory-limit": "512Mi"},
		{"podtracer.io/memory-limit": "10E"},
		{"podtracer.io/memory-limit": "32Mi", "podtracer.io/memory-request": "32Mi"}, // below what the agent needs to load
	} {
		in := readDeployment(t, "testdata/inject/basic/in.yaml")
		maps.Copy(in.Annotations, a)
		res := Mutate(in, goldenSidecar())
		if res.Action != ActionSkipped || len(res.Warnings) != 2 {
			t.Errorf("%v: action %s warnings %q, want skipped with the problem", a, res.Action, res.Warnings)
		}
	}
}

// A pod held to arm64 by its node affinity is not injected; one that may
// also run on amd64 is.
func TestMutateArchitecture(t *testing.T) {
	for _, tc := range []struct {
		terms  [][]string // each term's kubernetes.io/arch values
		inject bool
	}{
		{[][]string{{"arm64"}}, false},
		{[][]string{{"arm64"}, {"arm64", "s390x"}}, false},
		{[][]string{{"arm64", "amd64"}}, true},
		{[][]string{{"arm64"}, nil}, true}, // the second term does not hold the arch
		{[][]string{{"!amd64"}}, false},    // NotIn [amd64]
	} {
		in := readDeployment(t, "testdata/inject/basic/in.yaml")
		var terms []corev1.NodeSelectorTerm
		for _, values := range tc.terms {
			term := corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpIn, Values: []string{"linux"}}}}
			if len(values) == 1 && strings.HasPrefix(values[0], "!") {
				term.MatchExpressions = append(term.MatchExpressions, corev1.NodeSelectorRequirement{Key: corev1.LabelArchStable, Operator: corev1.NodeSelectorOpNotIn, Values: []string{values[0][1:]}})
			} else if values != nil {
				term.MatchExpressions = append(term.MatchExpressions, corev1.NodeSelectorRequirement{Key: corev1.LabelArchStable, Operator: corev1.NodeSelectorOpIn, Values: values})
			}
			terms = append(terms, term)
		}
		in.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
		if got := Mutate(in, goldenSidecar()).Action == ActionInjected; got != tc.inject {
			t.Errorf("terms %v: injected %v, want %v", tc.terms, got, tc.inject)
		}
	}
}

// In a pod with pod-level resources the sidecar has none of its own, so
// its resource annotations cannot be wrong there.
func TestMutatePodLevelResourcesIgnoreAnnotations(t *testing.T) {
	in := readDeployment(t, "testdata/inject/pod-level-resources/in.yaml")
	if in.Annotations == nil {
		in.Annotations = map[string]string{}
	}
	in.Annotations["podtracer.io/cpu-request"] = "1" // above the webhook's 500m limit
	if res := Mutate(in, goldenSidecar()); res.Action != ActionInjected {
		t.Errorf("action %s warnings %q, want injected", res.Action, res.Warnings)
	}
}

// A pod put on Windows nodes by its nodeSelector or node affinity, without
// spec.os (optional), is not injected; one put on Linux nodes so is.
func TestMutateOperatingSystem(t *testing.T) {
	windows := []corev1.NodeSelectorRequirement{{Key: corev1.LabelOSStable, Operator: corev1.NodeSelectorOpIn, Values: []string{"windows"}}}
	for _, tc := range []struct {
		name     string
		selector map[string]string
		terms    [][]corev1.NodeSelectorRequirement
		inject   bool
	}{
		{"nodeSelector windows", map[string]string{corev1.LabelOSStable: "windows"}, nil, false},
		{"nodeSelector linux", map[string]string{corev1.LabelOSStable: "linux"}, nil, true},
		{"affinity windows", nil, [][]corev1.NodeSelectorRequirement{windows}, false},
		{"affinity not linux", nil, [][]corev1.NodeSelectorRequirement{{{Key: corev1.LabelOSStable, Operator: corev1.NodeSelectorOpNotIn, Values: []string{"linux"}}}}, false},
		{"affinity windows or any", nil, [][]corev1.NodeSelectorRequirement{windows, nil}, true},
	} {
		in := readDeployment(t, "testdata/inject/basic/in.yaml")
		in.Spec.Template.Spec.NodeSelector = tc.selector
		if tc.terms != nil {
			var terms []corev1.NodeSelectorTerm
			for _, e := range tc.terms {
				terms = append(terms, corev1.NodeSelectorTerm{MatchExpressions: e})
			}
			in.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
				RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
		}
		res := Mutate(in, goldenSidecar())
		if got := res.Action == ActionInjected; got != tc.inject {
			t.Errorf("%s: action %s warnings %q, want injected %v", tc.name, res.Action, res.Warnings, tc.inject)
		}
		if !tc.inject && !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "eBPF needs Linux") }) {
			t.Errorf("%s: warnings %q, want the reason", tc.name, res.Warnings)
		}
	}
}

// A pod whose containers are all Guaranteed stays Guaranteed: the sidecar
// requests its limits, with a warning that says so. A Burstable pod's
// sidecar keeps the webhook's requests; a limit taken off by annotation
// gets a warning, since the pod cannot stay Guaranteed then.
func TestMutateKeepsGuaranteed(t *testing.T) {
	exact := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")}
	for _, tc := range []struct {
		name        string
		app         corev1.ResourceRequirements
		annotations map[string]string
		guaranteed  bool   // the pod after injection
		warning     string // a warning that contains this, "" for none about QoS
	}{
		{"guaranteed", corev1.ResourceRequirements{Requests: exact, Limits: exact}, nil, true, "requests its limits (cpu 500m, memory 256Mi)"},
		{"guaranteed by limits alone", corev1.ResourceRequirements{Limits: exact}, nil, true, "requests its limits"},
		{"guaranteed, own limits", corev1.ResourceRequirements{Limits: exact}, map[string]string{"podtracer.io/cpu-limit": "200m"}, true, "cpu 200m"},
		{"guaranteed, no cpu limit", corev1.ResourceRequirements{Limits: exact}, map[string]string{"podtracer.io/cpu-limit": "0"}, false, "without a cpu limit makes it Burstable"},
		{"burstable", corev1.ResourceRequirements{Requests: exact}, nil, false, ""},
	} {
		in := readDeployment(t, "testdata/inject/basic/in.yaml")
		in.Spec.Template.Spec.Containers[0].Resources = tc.app
		maps.Copy(in.Annotations, tc.annotations)
		res := Mutate(in, goldenSidecar())
		if res.Action != ActionInjected {
			t.Fatalf("%s: action %s warnings %q", tc.name, res.Action, res.Warnings)
		}
		spec := &res.Deployment.Spec.Template.Spec
		if got := guaranteed(spec); got != tc.guaranteed {
			t.Errorf("%s: Guaranteed after injection %v, want %v (sidecar %v)", tc.name, got, tc.guaranteed, spec.InitContainers[0].Resources)
		}
		qos := slices.IndexFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "QoS") })
		switch {
		case tc.warning == "" && qos >= 0:
			t.Errorf("%s: warning %q", tc.name, res.Warnings[qos])
		case tc.warning != "" && (qos < 0 || !strings.Contains(res.Warnings[qos], tc.warning)):
			t.Errorf("%s: warnings %q, want one with %q", tc.name, res.Warnings, tc.warning)
		}
		if tc.name == "burstable" && !equality.Semantic.DeepEqual(spec.InitContainers[0].Resources, goldenSidecar().Resources) {
			t.Errorf("burstable: sidecar resources %v, want the webhook's", spec.InitContainers[0].Resources)
		}
		// Admitted again, as the API server stored it: no change.
		again := Mutate(res.Deployment, goldenSidecar())
		if !equality.Semantic.DeepEqual(again.Deployment, res.Deployment) {
			t.Errorf("%s: admitted again, changed:\n%s", tc.name, diff(deploymentYAML(t, res.Deployment), deploymentYAML(t, again.Deployment)))
		}
	}
}

// What the webhook does not write of its sidecar survives its next
// admission (a user's ports and probe, a policy's seccomp profile, args),
// so that the result does not hang on the order webhooks ran in; what it
// writes (the image, its capabilities) is written again, with a warning
// for the image.
func TestMutateKeepsUnmanagedFields(t *testing.T) {
	first := Mutate(readDeployment(t, "testdata/inject/basic/in.yaml"), goldenSidecar())
	if first.Action != ActionInjected {
		t.Fatalf("action %s warnings %q", first.Action, first.Warnings)
	}
	edited := first.Deployment.DeepCopy()
	sc := &edited.Spec.Template.Spec.InitContainers[0]
	sc.Image = "mirror.example/podtracer/podtracer:v0.1.0"
	sc.Args = []string{"--debug"}
	sc.Ports = []corev1.ContainerPort{{Name: "metrics", ContainerPort: 9464}}
	sc.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/podtracer", "wait"}}}}
	sc.SecurityContext.SeccompProfile = &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	sc.SecurityContext.Capabilities.Add = append(sc.SecurityContext.Capabilities.Add, "NET_ADMIN")

	res := Mutate(edited, goldenSidecar())
	got := res.Deployment.Spec.Template.Spec.InitContainers[0]
	if len(got.Args) != 1 || len(got.Ports) != 1 || got.ReadinessProbe == nil || got.SecurityContext.SeccompProfile == nil {
		t.Errorf("edits the webhook does not write were undone: args %v ports %v probe %v seccomp %v", got.Args, got.Ports, got.ReadinessProbe, got.SecurityContext.SeccompProfile)
	}
	if got.Image != goldenSidecar().Image || slices.Contains(got.SecurityContext.Capabilities.Add, "NET_ADMIN") {
		t.Errorf("image %s, capabilities %v: want the webhook's", got.Image, got.SecurityContext.Capabilities.Add)
	}
	if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "mirror.example") }) {
		t.Errorf("warnings %q, want the image's replacement said", res.Warnings)
	}
	if !slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "command or args of its own") }) {
		t.Errorf("warnings %q, want the kept args said: the agent takes none", res.Warnings)
	}
	// Admitted again: no change, and only the args' warning, which holds
	// as long as they are there.
	if again := Mutate(res.Deployment, goldenSidecar()); !equality.Semantic.DeepEqual(again.Deployment, res.Deployment) ||
		len(again.Warnings) != 1 || !strings.Contains(again.Warnings[0], "command or args") {
		t.Errorf("admitted again: warnings %q, changed:\n%s", again.Warnings, diff(deploymentYAML(t, res.Deployment), deploymentYAML(t, again.Deployment)))
	}
}

// An http:// endpoint without a port is injected, with a warning: the
// sidecar's gRPC would dial port 443 in plaintext. An https:// one's 443
// is right, and gets none.
func TestMutateEndpointWithoutPort(t *testing.T) {
	for endpoint, warn := range map[string]bool{"http://collector.observability": true, "https://otlp.vendor.example": false, "http://collector.observability:4317": false} {
		in := readDeployment(t, "testdata/inject/basic/in.yaml")
		in.Annotations["podtracer.io/otlp-endpoint"] = endpoint
		res := Mutate(in, goldenSidecar())
		got := slices.ContainsFunc(res.Warnings, func(w string) bool { return strings.Contains(w, "names no port") })
		if res.Action != ActionInjected || got != warn {
			t.Errorf("%s: action %s warnings %q, want injected, warned %v", endpoint, res.Action, res.Warnings, warn)
		}
	}
}
