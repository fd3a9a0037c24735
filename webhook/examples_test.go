package webhook

import (
	"maps"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/yaml"
)

func yamlOf(t *testing.T, v any) string {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestSidecarExampleMatchesInjection: the hand-written sidecar in
// examples/sidecar is what the webhook would inject (the same security
// context, downward-API env and resources), so that the two ways to deploy
// podtracer do not drift apart.
func TestSidecarExampleMatchesInjection(t *testing.T) {
	example := readDeployment(t, "../examples/sidecar/deployment.yaml")
	manual := sidecarOf(example)
	if manual == nil {
		t.Fatal("examples/sidecar has no podtracer container")
	}

	app := example.DeepCopy()
	app.Spec.Template.Spec.InitContainers = slices.DeleteFunc(app.Spec.Template.Spec.InitContainers, func(c corev1.Container) bool { return c.Name == ContainerName })
	if len(app.Spec.Template.Spec.InitContainers) == 0 {
		app.Spec.Template.Spec.InitContainers = nil
	}
	app.Spec.Template.Spec.ShareProcessNamespace = nil
	app.Annotations = map[string]string{AnnotationInject: "true"}
	s := goldenSidecar()
	s.Image = manual.Image
	res := Mutate(app, s)
	injected := sidecarOf(res.Deployment)
	if injected == nil {
		t.Fatalf("not injected: %s %q", res.Action, res.Warnings)
	}

	if ex := example.Spec.Template.Spec.ShareProcessNamespace; ex == nil || !*ex {
		t.Error("examples/sidecar lacks shareProcessNamespace: true")
	}
	if !equality.Semantic.DeepEqual(manual.SecurityContext, injected.SecurityContext) {
		t.Errorf("securityContext differs:\n%s", diff(yamlOf(t, injected.SecurityContext), yamlOf(t, manual.SecurityContext)))
	}
	if !equality.Semantic.DeepEqual(manual.Resources, injected.Resources) {
		t.Errorf("resources differ:\n%s", diff(yamlOf(t, injected.Resources), yamlOf(t, manual.Resources)))
	}
	if !equality.Semantic.DeepEqual(manual.RestartPolicy, injected.RestartPolicy) || !equality.Semantic.DeepEqual(manual.Lifecycle, injected.Lifecycle) {
		t.Errorf("restartPolicy and lifecycle differ: a native sidecar whose postStart hook is podtracer wait\n%s", diff(yamlOf(t, injected.Lifecycle), yamlOf(t, manual.Lifecycle)))
	}
	if manual.TerminationMessagePolicy != injected.TerminationMessagePolicy {
		t.Errorf("terminationMessagePolicy %q, injected %q", manual.TerminationMessagePolicy, injected.TerminationMessagePolicy)
	}
	if !equality.Semantic.DeepEqual(manual.Env[:4], injected.Env[:4]) {
		t.Errorf("downward-API env differs:\n%s", diff(yamlOf(t, injected.Env[:4]), yamlOf(t, manual.Env[:4])))
	}
	manualEnv := map[string]string{}
	for _, e := range manual.Env[4:] {
		manualEnv[e.Name] = e.Value
	}
	for _, name := range []string{"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"} {
		if manualEnv[name] != envValue(*injected, name) {
			t.Errorf("%s = %q, injected %q", name, manualEnv[name], envValue(*injected, name))
		}
	}
	known := map[string]bool{}
	for _, st := range Settings {
		known[st.Env] = true
	}
	for _, name := range slices.Sorted(maps.Keys(manualEnv)) {
		if !known[name] {
			t.Errorf("examples/sidecar sets %s, which no setting knows", name)
		}
	}
}
