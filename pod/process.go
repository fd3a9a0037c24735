// Package pod is the pod as the agent sees it: its own PID namespace, the
// neighbour processes that share it, which of them are selected, and the
// Kubernetes metadata that the downward API hands the sidecar.
package pod

// Process is one neighbour process, as seen from the agent's PID namespace.
type Process struct {
	PID     int      // in the agent's (the pod's) PID namespace
	PPID    int      // parent, 0 when unknown
	Exe     string   // executable path, "" when it could not be read
	Name    string   // executable base name, or the kernel's comm when Exe is unknown
	RunAs   string   // the name it was run by, when that is a link to Exe (see runAs); else
	Cmdline []string // may be empty for short-lived processes
	// ContainerID is the container runtime's id, from /proc/PID/cgroup, "" outside containers.
	ContainerID string
}

// Metadata is what the downward API tells the sidecar about its pod.
type Metadata struct {
	PodName   string `env:"POD_NAME"`
	Namespace string `env:"POD_NAMESPACE"`
	NodeName  string `env:"NODE_NAME"`
	PodUID    string `env:"POD_UID"`
}
