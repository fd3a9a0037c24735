package envname

import "testing"

func TestNearest(t *testing.T) {
	known := []string{"PODTRACER_OPEN_PORTS", "PODTRACER_LOG_LEVEL", "PODTRACER_WEBHOOK_OTLP_ENDPOINT"}
	for _, c := range []struct{ name, want string }{
		{"PODTRACER_OPEN_PORT", "PODTRACER_OPEN_PORTS"},
		{"PODTRACER_WEBHOOK_OTLP_ENDPONT", "PODTRACER_WEBHOOK_OTLP_ENDPOINT"},
		{"PODTRACER_LOGLEVL", "PODTRACER_LOG_LEVEL"},
		{"PODTRACER_SOMETHING_ELSE", ""},
	} {
		if got := Nearest(c.name, known); got != c.want {
			t.Errorf("Nearest(%s) = %q, want %q", c.name, got, c.want)
		}
	}
}
