package webhook

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podtracer/podtracer/internal/cli"
)

// Annotations that users put on a Deployment (or on its pod template) to ask
// for the sidecar, and the one the webhook writes to remember what it did.
const (
	// AnnotationInject turns injection on ("true") or off ("false"). On the
	// Deployment it wins over the pod template's, because that is what
	// `kubectl annotate deployment` changes.
	AnnotationInject = "podtracer.io/inject"
	// AnnotationPrivileged runs the sidecar privileged instead of with the
	// capabilities below: an opt-in where the container runtime does not
	// know CAP_BPF or CAP_PERFMON, or a seccomp profile blocks bpf().
	AnnotationPrivileged = "podtracer.io/privileged"
	// AnnotationStatus is written on the pod template by the webhook and
	// records what it injected, so that a second pass changes nothing and
	// removal restores the template exactly.
	AnnotationStatus = "podtracer.io/status"

	annotationPrefix = "podtracer.io/"
)

// ContainerName is the name of the injected container.
const ContainerName = "podtracer"

// Capabilities are the only ones the agent's container gets; all others
// are dropped. What the agent does with each:
//   - BPF: load its eBPF programs and create their maps (ring buffer,
//     per-connection state). Split out of SYS_ADMIN in Linux 5.8.
//   - PERFMON: attach the raw tracepoints sys_enter and sys_exit and the
//     uprobes on neighbours' TLS libraries, and let the programs read
//     kernel memory (the socket behind each fd).
//   - SYS_PTRACE: readlink /proc/PID/exe and /proc/PID/fd/N of neighbour
//     processes that run as other users (the kernel's ptrace access check),
//     to name them and to find which of them listen on PODTRACER_OPEN_PORTS;
//     and their /proc/PID/maps and /proc/PID/root, to find their TLS library.
//   - DAC_READ_SEARCH: list /proc/PID/fd, a directory with mode 0500 owned
//     by the neighbour's user, which root without it cannot open.
//   - SYS_RESOURCE: lift RLIMIT_MEMLOCK for the maps on kernels before
//     5.11, which charge BPF memory to it instead of the memory cgroup.
//
// SYS_ADMIN is deliberately absent: raw tracepoints need no tracefs mount,
// and nothing else the agent does needs it. Kernels without CAP_BPF (before
// 5.8) need AnnotationPrivileged instead.
var Capabilities = []corev1.Capability{"BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE"}

// Sidecar is what the webhook injects, from its own configuration. The
// annotations of each Deployment refine it.
type Sidecar struct {
	Image           string
	ImagePullPolicy corev1.PullPolicy // empty: Kubernetes' default for the image's tag
	// OTLPEndpoint and OTLPInsecure become OTEL_EXPORTER_OTLP_ENDPOINT and
	// OTEL_EXPORTER_OTLP_INSECURE unless a Deployment's annotations set them.
	// Empty: not set, and the agent prints spans to its stdout.
	OTLPEndpoint string
	OTLPInsecure string
	Resources    corev1.ResourceRequirements
}

// Action says what Mutate did.
type Action string

// What Mutate did to a Deployment.
const (
	ActionNone     Action = "none"     // nothing asked, nothing done
	ActionInjected Action = "injected" // sidecar added or brought up to date
	ActionRemoved  Action = "removed"  // sidecar taken out
	ActionSkipped  Action = "skipped"  // asked for, but not possible: see the warnings
)

// Result is the outcome of Mutate.
type Result struct {
	// Deployment is the mutated copy; the input is never modified. It equals
	// the input when nothing changed.
	Deployment *appsv1.Deployment
	Action     Action
	// Warnings explain why the Deployment was left as it was, or what was
	// ignored. They are returned to the user by the API server.
	Warnings []string
}

// status is the value of AnnotationStatus.
type status struct {
	// Container is the name of the container the webhook added.
	Container string `json:"container"`
	// ShareProcessNamespace is true when the webhook set
	// spec.shareProcessNamespace, which was unset before.
	ShareProcessNamespace bool `json:"shareProcessNamespace,omitempty"`
	// Managed is a hash of what the webhook wrote of the container that
	// it writes again on every update (managedHash): a container that no
	// longer matches it was edited by hand, and the edit is undone.
	Managed string `json:"managed,omitempty"`
}

// Mutate returns d as the webhook wants it: with the podtracer sidecar when
// AnnotationInject is "true", without what the webhook injected earlier
// otherwise. It is a pure function of its arguments, and Mutate of its own
// output changes nothing.
//
// Mutate never refuses: a Deployment it cannot inject (the pod opts out of a
// shared PID namespace, uses the host's, or already has a container named
// "podtracer"), or whose podtracer annotations it cannot understand, comes
// back unchanged, with warnings that say why.
func Mutate(d *appsv1.Deployment, s Sidecar) Result {
	annotations := podtracerAnnotations(d)

	want, _, err := parseBoolAnnotation(annotations, AnnotationInject)
	if err != nil {
		return unchanged(d, ActionSkipped, err.Error()+"; Deployment left unchanged")
	}

	out := d.DeepCopy()
	at, old, earlier, warnings := strip(out)
	stripped := earlier != nil
	if !stripped {
		// One that an older webhook stripped of its status (a rollback,
		// or both serving during an upgrade) is the webhook's to update
		// or take out, as asked.
		if i := orphanIndex(&out.Spec.Template.Spec); i >= 0 {
			spec := &out.Spec.Template.Spec
			at, old, stripped = i, spec.InitContainers[i].DeepCopy(), true
			spec.InitContainers = slices.Delete(spec.InitContainers, i, i+1)
			if len(spec.InitContainers) == 0 {
				spec.InitContainers = nil
			}
			what := "it is taken as the webhook's"
			if !want {
				what = "it is taken out, as the annotation says"
			}
			warnings = append(warnings, fmt.Sprintf("the %s init container has the webhook's postStart hook but no %s annotation (an older webhook took it off, or it was pasted from the example): %s", ContainerName, AnnotationStatus, what))
		}
	}
	if !want {
		if !stripped {
			return unchanged(d, ActionNone)
		}
		return Result{Deployment: out, Action: ActionRemoved, Warnings: warnings}
	}
	if reasons := cannotInject(&out.Spec.Template.Spec); len(reasons) > 0 {
		for i, r := range reasons {
			reasons[i] = "not injected: " + r
		}
		if !stripped {
			return unchanged(d, ActionSkipped, reasons...)
		}
		// An earlier injection no longer fits the pod: take it out.
		return Result{Deployment: out, Action: ActionRemoved, Warnings: append(warnings, reasons...)}
	}

	container, problems, ignored := sidecarContainer(d, annotations, s)
	if len(problems) > 0 {
		head := fmt.Sprintf("Deployment left unchanged: %d podtracer.io annotation(s) invalid", len(problems))
		return unchanged(d, ActionSkipped, append([]string{head}, problems...)...)
	}
	warnings = append(warnings, ignored...)

	spec := &out.Spec.Template.Spec
	if podLevelResources(spec) {
		// The pod's containers must fit in its pod-level resources (their
		// requests' sum, each one's limit): the API server would refuse
		// the sidecar's own, and with them the user's update.
		container.Resources = corev1.ResourceRequirements{}
		warnings = append(warnings, "the pod sets pod-level resources (spec.resources): the podtracer sidecar has no requests or limits of its own and shares the pod's")
	} else if guaranteed(spec) {
		// With requests below its limits the sidecar would make the pod
		// Burstable: no exclusive CPUs from the static CPU manager, and
		// evicted before Guaranteed pods. Its requests are raised to its
		// limits, which keeps the pod's class.
		if w := keepGuaranteed(&container.Resources); w != "" {
			warnings = append(warnings, w)
		}
	}
	st := status{Container: ContainerName, Managed: managedHash(&container)}
	recorded := ""
	if earlier != nil {
		recorded = earlier.Managed
	}
	warnings = append(warnings, keepUsers(&container, old, at >= 0, recorded)...)
	if spec.ShareProcessNamespace == nil {
		spec.ShareProcessNamespace = new(true)
		st.ShareProcessNamespace = true
	}
	// A native sidecar (an init container that keeps running), first of
	// them: it starts before the pod's other init containers and its
	// containers, and its postStart hook holds their start until the
	// agent traces (at most 10 s), so that their first connections are
	// followed from their first bytes; it stops after them, so that it
	// sees their drain; and it does not keep a pod whose containers have
	// all ended from completing. Where it was, if it was among them:
	// moving it would change the template (and roll the pods) for nothing.
	spec.InitContainers = slices.Insert(spec.InitContainers, max(at, 0), container)
	raw, _ := json.Marshal(st) // cannot fail: plain struct
	if out.Spec.Template.Annotations == nil {
		out.Spec.Template.Annotations = map[string]string{}
	}
	out.Spec.Template.Annotations[AnnotationStatus] = string(raw)

	if equality.Semantic.DeepEqual(d, out) {
		return Result{Deployment: d.DeepCopy(), Action: ActionNone, Warnings: warnings}
	}
	return Result{Deployment: out, Action: ActionInjected, Warnings: warnings}
}

func unchanged(d *appsv1.Deployment, a Action, warnings ...string) Result {
	return Result{Deployment: d.DeepCopy(), Action: a, Warnings: warnings}
}

// podtracerAnnotations are the pod template's podtracer.io/ annotations,
// overridden by the Deployment's.
func podtracerAnnotations(d *appsv1.Deployment) map[string]string {
	a := map[string]string{}
	for _, m := range []map[string]string{d.Spec.Template.Annotations, d.Annotations} {
		for k, v := range m {
			if strings.HasPrefix(k, annotationPrefix) && k != AnnotationStatus {
				a[k] = v
			}
		}
	}
	return a
}

func parseBoolAnnotation(a map[string]string, key string) (value, set bool, err error) {
	v, ok := a[key]
	if !ok {
		return false, false, nil
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, true, fmt.Errorf("annotation %s: %s is not true or false", key, quote(v))
	}
	return b, true, nil
}

// strip removes what an earlier injection added, as recorded by
// AnnotationStatus, and reports whether there was one, and where in the
// init containers the sidecar was (-1: not there; otherwise at most the
// number of init containers left), what it was then, and the status it had
// recorded (nil: none). Without the status
// annotation nothing is touched: a container named podtracer is then the
// user's own.
func strip(d *appsv1.Deployment) (int, *corev1.Container, *status, []string) {
	raw, ok := d.Spec.Template.Annotations[AnnotationStatus]
	if !ok {
		return -1, nil, nil, nil
	}
	var warnings []string
	var st status
	if err := json.Unmarshal([]byte(raw), &st); err != nil || st.Container == "" {
		// Unreadable: assume the defaults, which is what every version wrote.
		warnings = append(warnings, fmt.Sprintf("annotation %s is unreadable: only the %s container was taken out", AnnotationStatus, ContainerName))
		st = status{Container: ContainerName}
	} else if st.Container != ContainerName {
		// The webhook only ever adds a container of that name: another one
		// was written by someone else, and may be theirs.
		warnings = append(warnings, fmt.Sprintf("annotation %s names container %q, which the webhook never adds: only the %s container was taken out", AnnotationStatus, st.Container, ContainerName))
		st.Container = ContainerName
	}
	spec := &d.Spec.Template.Spec
	named := func(c corev1.Container) bool { return c.Name == st.Container }
	at := slices.IndexFunc(spec.InitContainers, named)
	var old *corev1.Container
	if at >= 0 {
		old = spec.InitContainers[at].DeepCopy()
	} else if i := slices.IndexFunc(spec.Containers, named); i >= 0 {
		// Among the containers, where webhooks before native sidecars
		// put it: it moves to the init containers.
		old = spec.Containers[i].DeepCopy()
	}
	spec.InitContainers = slices.DeleteFunc(spec.InitContainers, named)
	if len(spec.InitContainers) == 0 {
		spec.InitContainers = nil
	}
	spec.Containers = slices.DeleteFunc(spec.Containers, named)
	if st.ShareProcessNamespace && spec.ShareProcessNamespace != nil && *spec.ShareProcessNamespace {
		spec.ShareProcessNamespace = nil
	}
	delete(d.Spec.Template.Annotations, AnnotationStatus)
	if len(d.Spec.Template.Annotations) == 0 {
		d.Spec.Template.Annotations = nil
	}
	return at, old, &st, warnings
}

// orphanIndex is the index among the init containers of a sidecar that
// this webhook injected and an older one stripped of its status (a
// rollback, or both serving during an upgrade: the older one looked for it
// among the containers only), else -1: a native sidecar named podtracer
// whose postStart hook is the webhook's. A Deployment asking for the
// sidecar gets it adopted, rather than skipped for its name for ever. (A
// sidecar pasted by hand from the example looks the same, and is adopted
// too when the Deployment asks for injection.)
func orphanIndex(spec *corev1.PodSpec) int {
	return slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool {
		return c.Name == ContainerName && c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways &&
			equality.Semantic.DeepEqual(c.Lifecycle, waitHook())
	})
}

// waitHook is the sidecar's postStart hook: `podtracer wait`, which
// returns once the agent traces, or after 10 s, never failing. The kubelet
// starts the pod's next container when it returns.
func waitHook() *corev1.Lifecycle {
	return &corev1.Lifecycle{PostStart: &corev1.LifecycleHandler{
		Exec: &corev1.ExecAction{Command: []string{"/podtracer", "wait"}},
	}}
}

// cannotInject says why the agent could not work in a pod with this spec.
func cannotInject(spec *corev1.PodSpec) []string {
	var reasons []string
	if spec.ShareProcessNamespace != nil && !*spec.ShareProcessNamespace {
		reasons = append(reasons, "shareProcessNamespace is false, so the sidecar could not see the other containers")
	}
	if spec.HostPID {
		reasons = append(reasons, "hostPID is true, so the sidecar would trace the whole node")
	}
	if spec.HostUsers != nil && !*spec.HostUsers {
		reasons = append(reasons, "hostUsers is false: in a user namespace the sidecar's BPF and PERFMON capabilities are not the host's, and the kernel refuses it bpf()")
	}
	if spec.OS != nil && spec.OS.Name != corev1.Linux {
		reasons = append(reasons, fmt.Sprintf("spec.os.name is %s; eBPF needs Linux", spec.OS.Name))
	}
	if os := pinnedOff(spec, corev1.LabelOSStable, string(corev1.Linux)); os != "" {
		// spec.os is optional: a nodeSelector or node affinity is the
		// usual way to put a pod on Windows nodes.
		reasons = append(reasons, fmt.Sprintf("the pod runs on %s nodes only; eBPF needs Linux", os))
	}
	if arch := pinnedOff(spec, corev1.LabelArchStable, "amd64"); arch != "" {
		reasons = append(reasons, fmt.Sprintf("the pod runs on %s nodes only, and the podtracer image is built for amd64", arch))
	}
	for _, list := range [][]corev1.Container{spec.Containers, spec.InitContainers} {
		for _, c := range list {
			if c.Name == ContainerName {
				reasons = append(reasons, "the pod already has a container named "+ContainerName)
			}
		}
	}
	return reasons
}

// qosResources are the resources a pod's QoS class is computed from.
var qosResources = []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}

// guaranteed tells whether the pod's QoS class is Guaranteed: each of its
// containers, init containers included, has CPU and memory limits, and
// requests equal to them (a request left out is its limit).
func guaranteed(spec *corev1.PodSpec) bool {
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for _, c := range list {
			if !guaranteedResources(&c.Resources) {
				return false
			}
		}
	}
	return len(spec.Containers) > 0
}

func guaranteedResources(r *corev1.ResourceRequirements) bool {
	for _, name := range qosResources {
		lim, ok := r.Limits[name]
		if !ok || lim.IsZero() {
			return false
		}
		if req, ok := r.Requests[name]; ok && req.Cmp(lim) != 0 {
			return false
		}
	}
	return true
}

// keepGuaranteed makes the sidecar's requests its limits, so that a
// Guaranteed pod stays so, and says so; or says why it cannot (a limit
// taken off by annotation).
func keepGuaranteed(r *corev1.ResourceRequirements) string {
	for _, name := range qosResources {
		if lim, ok := r.Limits[name]; !ok || lim.IsZero() {
			return fmt.Sprintf("the pod's QoS class is Guaranteed, and the podtracer sidecar without a %s limit makes it Burstable", name)
		}
	}
	if guaranteedResources(r) {
		return ""
	}
	if r.Requests == nil {
		r.Requests = corev1.ResourceList{}
	}
	for _, name := range qosResources {
		r.Requests[name] = r.Limits[name]
	}
	cpu, mem := r.Limits[corev1.ResourceCPU], r.Limits[corev1.ResourceMemory]
	return fmt.Sprintf("the pod's QoS class is Guaranteed: the podtracer sidecar requests its limits (cpu %s, memory %s) to keep it so; podtracer.io/cpu-limit and memory-limit set them", cpu.String(), mem.String())
}

// podLevelResources tells whether the pod sets pod-level resources
// (spec.resources), which its containers share.
func podLevelResources(spec *corev1.PodSpec) bool {
	r := spec.Resources
	return r != nil && (len(r.Requests) > 0 || len(r.Limits) > 0)
}

// pinnedOff is the value of node label, other than supported, that the
// pod's nodeSelector or required node affinity holds it to ("" if none):
// an operating system (kubernetes.io/os) or a CPU architecture
// (kubernetes.io/arch) the sidecar, whose image is linux/amd64 only,
// could not start on, and the pod would never be ready.
func pinnedOff(spec *corev1.PodSpec, label, supported string) string {
	if a, ok := spec.NodeSelector[label]; ok && a != supported {
		return a
	}
	aff := spec.Affinity
	if aff == nil || aff.NodeAffinity == nil || aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	// The terms are ORed: the pod is held off supported only if every
	// term is.
	terms := aff.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	var values []string
	for _, term := range terms {
		held := false
		for _, e := range term.MatchExpressions {
			if e.Key != label {
				continue
			}
			switch {
			case e.Operator == corev1.NodeSelectorOpIn && !slices.Contains(e.Values, supported):
				held = true
				values = append(values, e.Values...)
			case e.Operator == corev1.NodeSelectorOpNotIn && slices.Contains(e.Values, supported):
				held = true
				values = append(values, "other than "+supported)
			}
		}
		if !held {
			return ""
		}
	}
	slices.Sort(values)
	return strings.Join(slices.Compact(values), ", ")
}

// sidecarContainer builds the injected container. problems are annotation
// values that cannot be used (the caller then injects nothing); ignored are
// unknown podtracer.io/ annotations.
func sidecarContainer(d *appsv1.Deployment, annotations map[string]string, s Sidecar) (c corev1.Container, problems, ignored []string) {
	env := []corev1.EnvVar{
		fieldEnv("POD_NAME", "metadata.name"),
		fieldEnv("POD_NAMESPACE", "metadata.namespace"),
		fieldEnv("NODE_NAME", "spec.nodeName"),
		fieldEnv("POD_UID", "metadata.uid"),
	}

	name := deploymentName(d)
	values := map[string]string{
		"OTEL_SERVICE_NAME":           name,
		"OTEL_EXPORTER_OTLP_ENDPOINT": s.OTLPEndpoint,
		"OTEL_EXPORTER_OTLP_INSECURE": s.OTLPInsecure,
	}
	privileged := false
	resources := *s.Resources.DeepCopy()
	for _, key := range slices.Sorted(maps.Keys(annotations)) {
		v := annotations[key]
		switch key {
		case AnnotationInject:
			continue
		case AnnotationPrivileged:
			b, _, err := parseBoolAnnotation(annotations, key)
			if err != nil {
				problems = append(problems, err.Error())
			}
			privileged = b
			continue
		}
		if r, ok := resourceByAnnotation[key]; ok {
			q, err := checkQuantity(strings.TrimSpace(v), r.name)
			if err != nil {
				problems = append(problems, fmt.Sprintf("annotation %s: %v", key, err))
				continue
			}
			setResource(&resources, r, q)
			continue
		}
		st, ok := settingByAnnotation[key]
		if !ok {
			ignored = append(ignored, fmt.Sprintf("unknown annotation %s ignored", key))
			continue
		}
		v = strings.TrimSpace(v)
		if err := st.check(v); err != nil {
			problems = append(problems, fmt.Sprintf("annotation %s: %v", key, err))
			continue
		}
		if st.clean != nil {
			v = st.clean(v)
		}
		values[st.Env] = v
	}
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, hasReq := resources.Requests[res]
		lim, hasLim := resources.Limits[res]
		if hasReq && hasLim && req.Cmp(lim) > 0 && !podLevelResources(&d.Spec.Template.Spec) {
			problems = append(problems, fmt.Sprintf("the sidecar's %s request %s is above its limit %s (podtracer.io/%s-request and -limit, or the webhook's)", res, req.String(), lim.String(), res))
		}
	}
	if lim, ok := resources.Limits[corev1.ResourceMemory]; ok && lim.Cmp(minMemoryLimit) < 0 && !podLevelResources(&d.Spec.Template.Spec) {
		problems = append(problems, fmt.Sprintf("the sidecar's memory limit %s is below %s (podtracer.io/memory-limit, or the webhook's): %s", lim.String(), minMemoryLimit.String(), minMemoryWhy))
	}
	if values["PODTRACER_SHUTDOWN_WAIT"] == "" {
		// A native sidecar's SIGTERM comes once the pod's containers
		// have ended: nothing is left to drain, and what is left of the
		// grace period goes to the flush. (Another native sidecar
		// declared before this one, a mesh's proxy, still talks then.)
		values["PODTRACER_SHUTDOWN_WAIT"] = "0s"
	}
	_, ownEndpoint := annotations["podtracer.io/otlp-endpoint"]
	if _, ownInsecure := annotations["podtracer.io/otlp-insecure"]; ownEndpoint && !ownInsecure && values["OTEL_EXPORTER_OTLP_INSECURE"] == "true" {
		// The webhook's plaintext goes with its endpoint (a collector in
		// the cluster): a Deployment's own endpoint (a vendor's https://,
		// with its credentials) is taken as its scheme says. Its TLS
		// (false) holds for every endpoint.
		delete(values, "OTEL_EXPORTER_OTLP_INSECURE")
	}
	if u, ok := cli.PlaintextWithoutPort(annotations["podtracer.io/otlp-endpoint"]); ok {
		// The webhook's own endpoint is the operator's, warned of at its
		// start.
		ignored = append(ignored, fmt.Sprintf("annotation podtracer.io/otlp-endpoint %s names no port, so the sidecar's gRPC dials port 443 in plaintext; an OpenTelemetry Collector's OTLP/gRPC port is 4317", u.Redacted()))
	}
	if values["OTEL_TRACES_SAMPLER_ARG"] != "" && !strings.HasSuffix(values["OTEL_TRACES_SAMPLER"], "traceidratio") {
		// The agent reads the ratio for the ratio samplers only.
		ignored = append(ignored, "annotation podtracer.io/sampler-arg has no effect without podtracer.io/sampler traceidratio or parentbased_traceidratio")
	}
	if !generatedName(d) {
		// A generated name is not known at CREATE, and the prefix is
		// no Deployment's name: none rather than a wrong one.
		attrs := "k8s.deployment.name=" + name
		if extra := values["OTEL_RESOURCE_ATTRIBUTES"]; extra != "" {
			attrs += "," + extra
		}
		values["OTEL_RESOURCE_ATTRIBUTES"] = attrs
	}
	for _, st := range Settings {
		if v := values[st.Env]; v != "" {
			env = append(env, corev1.EnvVar{Name: st.Env, Value: v})
		}
	}

	c = corev1.Container{
		Name:            ContainerName,
		Image:           s.Image,
		ImagePullPolicy: pullPolicy(s),
		Env:             env,
		Resources:       resources,
		// A native sidecar (Kubernetes 1.29+), among the init containers.
		RestartPolicy:            new(corev1.ContainerRestartPolicyAlways),
		Lifecycle:                waitHook(),
		SecurityContext:          securityContext(privileged),
		TerminationMessagePath:   corev1.TerminationMessagePathDefault,
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
	return c, problems, ignored
}

// minMemoryLimit is the least memory limit the sidecar gets, and
// minMemoryWhy why.
var minMemoryLimit = resource.MustParse("64Mi")

const minMemoryWhy = "the agent peaks at about 26 MB while it loads, and a native sidecar killed before its postStart hook returns is restarted while the application waits"

// resourceAnnotation sets one of the sidecar's requests or limits, over
// the webhook's PODTRACER_WEBHOOK_*_REQUEST and _LIMIT.
type resourceAnnotation struct {
	name  corev1.ResourceName
	limit bool
}

var resourceByAnnotation = map[string]resourceAnnotation{
	"podtracer.io/cpu-request":    {corev1.ResourceCPU, false},
	"podtracer.io/cpu-limit":      {corev1.ResourceCPU, true},
	"podtracer.io/memory-request": {corev1.ResourceMemory, false},
	"podtracer.io/memory-limit":   {corev1.ResourceMemory, true},
}

// checkQuantity reads a request or limit as the API server would keep it:
// a CPU finer than 1m, or memory finer than a byte, would be rounded up
// there, and the template would then differ from the webhook's on every
// update.
func checkQuantity(v string, name corev1.ResourceName) (resource.Quantity, error) {
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return q, fmt.Errorf("%s is not a quantity like 100m or 64Mi", quote(v))
	}
	if q.Sign() < 0 {
		return q, fmt.Errorf("%s is negative", quote(v))
	}
	if q.Cmp(resource.MustParse("1Pi")) > 0 {
		return q, fmt.Errorf("%s is too large", quote(v))
	}
	whole := resource.NewQuantity(q.Value(), q.Format)
	if name == corev1.ResourceCPU {
		whole = resource.NewMilliQuantity(q.MilliValue(), q.Format)
	}
	if q.Cmp(*whole) != 0 {
		return q, fmt.Errorf("%s is finer than Kubernetes keeps (1m of CPU, 1 byte of memory)", quote(v))
	}
	return q, nil
}

// setResource sets one request or limit; 0 means none, as for the
// webhook's own settings: a limit of 0 is taken out, and a request of 0 is
// written as 0 where there is a limit (Kubernetes would otherwise make the
// limit the request).
func setResource(rr *corev1.ResourceRequirements, r resourceAnnotation, q resource.Quantity) {
	list := &rr.Requests
	if r.limit {
		list = &rr.Limits
	}
	if *list == nil {
		*list = corev1.ResourceList{}
	}
	(*list)[r.name] = q
	if !q.IsZero() {
		return
	}
	if r.limit {
		delete(rr.Limits, r.name)
		if req, ok := rr.Requests[r.name]; ok && req.IsZero() {
			delete(rr.Requests, r.name)
		}
	} else if _, limited := rr.Limits[r.name]; !limited {
		delete(rr.Requests, r.name)
	}
	if len(rr.Requests) == 0 {
		rr.Requests = nil
	}
	if len(rr.Limits) == 0 {
		rr.Limits = nil
	}
}

// managedEnv are the sidecar variables the webhook writes.
var managedEnv = func() map[string]string {
	m := map[string]string{"POD_NAME": "", "POD_NAMESPACE": "", "NODE_NAME": "", "POD_UID": ""}
	for _, st := range Settings {
		m[st.Env] = st.Annotation
	}
	return m
}()

// managedHash sums what the webhook writes of the sidecar c: the
// variables it manages and the resources.
func managedHash(c *corev1.Container) string {
	var parts struct {
		Env       []corev1.EnvVar
		Resources corev1.ResourceRequirements
	}
	for _, e := range c.Env {
		if _, ok := managedEnv[e.Name]; ok {
			parts.Env = append(parts.Env, e)
		}
	}
	parts.Resources = c.Resources
	raw, _ := json.Marshal(parts) // cannot fail: plain structs
	h := fnv.New64a()
	h.Write(raw)
	return strconv.FormatUint(h.Sum64(), 16)
}

// keepUsers carries over to the new sidecar c what a user added to the
// one injected before (old, nil if none; native if it was among the init
// containers, with a hook and restart policy of the webhook's): variables the webhook does not
// write (OTEL_EXPORTER_OTLP_HEADERS from a Secret, say, with `kubectl set
// env`), envFrom and volume mounts (a private CA for
// OTEL_EXPORTER_OTLP_CERTIFICATE). What the webhook writes it writes
// again; when old's no longer matches what it recorded having written
// (recorded: managedHash then, "" for a status of before), someone
// edited it, and the warnings say that the edit is undone and which
// annotation sets it. A change of annotations or of the webhook's own
// settings is no edit, and gets none.
func keepUsers(c *corev1.Container, old *corev1.Container, native bool, recorded string) []string {
	if old == nil {
		return nil
	}
	edited := recorded != "" && managedHash(old) != recorded
	var warnings []string
	for _, e := range old.Env {
		annotation, managed := managedEnv[e.Name]
		if !managed {
			c.Env = append(c.Env, e)
			continue
		}
		i := slices.IndexFunc(c.Env, func(n corev1.EnvVar) bool { return n.Name == e.Name })
		if !edited || i >= 0 && equality.Semantic.DeepEqual(c.Env[i], e) {
			continue
		}
		w := fmt.Sprintf("the %s container's %s is the webhook's: the edit is undone", ContainerName, e.Name)
		if annotation != "" {
			w += "; set it with annotation " + annotation
		}
		warnings = append(warnings, w)
	}
	c.EnvFrom = old.EnvFrom
	c.VolumeMounts = old.VolumeMounts
	// Fields the webhook never writes, as a user or another mutating
	// webhook left them (ports for a metrics scrape, a probe, a policy's
	// seccomp profile): with reinvocation, writing them off would make
	// the result hang on the order the webhooks ran in.
	c.Command, c.Args, c.WorkingDir = old.Command, old.Args, old.WorkingDir
	c.Ports, c.VolumeDevices, c.ResizePolicy = old.Ports, old.VolumeDevices, old.ResizePolicy
	c.LivenessProbe, c.ReadinessProbe, c.StartupProbe = old.LivenessProbe, old.ReadinessProbe, old.StartupProbe
	c.Stdin, c.StdinOnce, c.TTY = old.Stdin, old.StdinOnce, old.TTY
	if sc := old.SecurityContext; sc != nil {
		// Its user, root filesystem, privileges and capabilities are the
		// webhook's; the rest confines the agent no further than it
		// runs (seccomp's RuntimeDefault allows bpf() to a process with
		// CAP_BPF).
		c.SecurityContext.SeccompProfile, c.SecurityContext.AppArmorProfile = sc.SeccompProfile, sc.AppArmorProfile
		c.SecurityContext.SELinuxOptions, c.SecurityContext.RunAsGroup = sc.SELinuxOptions, sc.RunAsGroup
	}
	if len(old.Command) > 0 || len(old.Args) > 0 {
		// Kept, but the webhook writes neither: one left from debugging
		// (sleep infinity) would keep the agent from ever running.
		warnings = append(warnings, fmt.Sprintf("the %s container has a command or args of its own (%q %q), kept: the agent runs only with the image's entrypoint and no args", ContainerName, old.Command, old.Args))
	}
	if old.Image != c.Image {
		// Another webhook's mirror, an edit, or the webhook's own new
		// image: the sidecar runs the webhook's.
		warnings = append(warnings, fmt.Sprintf("the %s container's image %s is replaced by the webhook's %s (PODTRACER_WEBHOOK_IMAGE)", ContainerName, old.Image, c.Image))
	}
	// The hook and the restart policy make it a native sidecar that
	// holds the application until the agent traces: written again. (One
	// of an older webhook, among the containers, had neither: no edit.)
	if native && (!equality.Semantic.DeepEqual(old.Lifecycle, c.Lifecycle) || !equality.Semantic.DeepEqual(old.RestartPolicy, c.RestartPolicy)) {
		warnings = append(warnings, fmt.Sprintf("the %s container's lifecycle and restartPolicy are the webhook's: the edit is undone", ContainerName))
	}
	if edited && !equality.Semantic.DeepEqual(c.Resources, old.Resources) {
		warnings = append(warnings, fmt.Sprintf("the %s container's resources are the webhook's: the edit is undone; set them with annotations podtracer.io/cpu-request, cpu-limit, memory-request and memory-limit", ContainerName))
	}
	return warnings
}

// securityContext is the least the agent needs: root (to read its
// neighbours' /proc entries) with Capabilities, or privileged on request.
func securityContext(privileged bool) *corev1.SecurityContext {
	sc := &corev1.SecurityContext{
		// Root, even when the pod asks for non-root users.
		RunAsUser:              new(int64(0)),
		RunAsNonRoot:           new(false),
		ReadOnlyRootFilesystem: new(true),
	}
	if privileged {
		sc.Privileged = new(true)
		return sc
	}
	sc.AllowPrivilegeEscalation = new(false)
	sc.Capabilities = &corev1.Capabilities{
		Add:  slices.Clone(Capabilities),
		Drop: []corev1.Capability{"ALL"},
	}
	return sc
}

func fieldEnv(name, path string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path},
	}}
}

// deploymentName is the service name podtracer reports by default. A
// Deployment created with generateName has no name at admission, and the
// generated one on later updates: it is named by its prefix in both, so
// that an update does not change the sidecar and roll the pods.
func deploymentName(d *appsv1.Deployment) string {
	if generatedName(d) {
		return strings.TrimRight(d.GenerateName, "-")
	}
	return d.Name
}

// generatedName tells whether d's name is (or will be) generated from its
// generateName: the same answer at CREATE and on every later update.
func generatedName(d *appsv1.Deployment) bool {
	return d.GenerateName != "" && (d.Name == "" || strings.HasPrefix(d.Name, d.GenerateName))
}

// pullPolicy is the configured policy, or the one the API server would
// default to, so that a stored Deployment and a fresh injection compare
// equal.
func pullPolicy(s Sidecar) corev1.PullPolicy {
	if s.ImagePullPolicy != "" {
		return s.ImagePullPolicy
	}
	image := s.Image
	if strings.Contains(image, "@") {
		return corev1.PullIfNotPresent
	}
	tag := ""
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		tag = image[i+1:]
	}
	if tag == "" || tag == "latest" {
		return corev1.PullAlways
	}
	return corev1.PullIfNotPresent
}
