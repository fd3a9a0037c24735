// Command podtracer-webhook is the mutating admission webhook that injects
// the podtracer sidecar into annotated Deployments. It is a binary of its
// own, beside the agent in the same image, so that the agent, which runs
// in every traced pod, does not carry the Kubernetes API's packages: they
// made a third of its executable and 4 MB of its resident memory.
package main

import (
	"fmt"
	"os"

	"github.com/podtracer/podtracer/internal/cli"
	"github.com/podtracer/podtracer/webhook"
)

func main() {
	if err := webhook.Main(cli.Context(), cli.Logger(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "podtracer-webhook:", err)
		os.Exit(1)
	}
}
