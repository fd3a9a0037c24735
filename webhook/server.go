package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jsonpatch5 "github.com/evanphx/json-patch/v5"
	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxBodyBytes bounds an AdmissionReview: the API server stores objects of
// at most about 1.5 MiB, and an UPDATE review carries two.
const maxBodyBytes = 8 << 20

var deploymentKind = metav1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}

// Server is the webhook's HTTPS server: /mutate for the API server, /healthz
// and /readyz for the kubelet.
type Server struct {
	sidecar Sidecar
	logger  *slog.Logger
	certs   *certReloader
	reload  time.Duration
	ready   atomic.Bool

	// mutate is Mutate; a test seam to prove that a panic is survived.
	mutate func(*appsv1.Deployment, Sidecar) Result
}

// NewServer loads the certificate files and prepares the handlers.
func NewServer(c Config, logger *slog.Logger) (*Server, error) {
	certs, err := newCertReloader(c.TLSCert, c.TLSKey, logger)
	if err != nil {
		return nil, err
	}
	return &Server{sidecar: c.Sidecar(), logger: logger, certs: certs, reload: c.CertReloadInterval, mutate: Mutate}, nil
}

// Handler routes the webhook's paths. It needs no TLS, which tests use.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mutate", s.serveMutate)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	return s.recoverPanics(mux)
}

// serverErrors is the HTTPS server's error log. A failed TLS handshake is
// how a webhook the API server no longer trusts (a CA rotated, a
// caBundle not updated) shows: with failurePolicy Ignore nothing else
// says that injection stopped, so it is a warning, though at most one
// per interval (a port scanner makes many), with the count of the others.
type serverErrors struct {
	logger     *slog.Logger
	every      time.Duration
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (w *serverErrors) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	if !strings.Contains(msg, "TLS handshake error") {
		w.logger.Warn("https server", "error", msg)
		return len(p), nil
	}
	if !strings.Contains(msg, "remote error: tls:") {
		// No alert from the client: a load balancer's TCP check or a
		// port scan that closed without a handshake (EOF, a reset),
		// not a client that refused the certificate.
		w.logger.Debug("TLS handshake failed", "error", msg)
		return len(p), nil
	}
	w.mu.Lock()
	now := time.Now()
	if !w.last.IsZero() && now.Sub(w.last) < w.every {
		w.suppressed++
		w.mu.Unlock()
		return len(p), nil
	}
	suppressed := w.suppressed
	w.last, w.suppressed = now, 0
	w.mu.Unlock()
	w.logger.Warn("TLS handshake failed: the client refused the certificate; if it is the API server, check the webhook configuration's caBundle",
		"error", msg, "others_since_last", suppressed)
	return len(p), nil
}

// Serve serves HTTPS on ln until ctx is done, then stops accepting, says it
// is not ready, and lets requests in flight finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.certs.watch(ctx, s.reload)

	srv := &http.Server{
		Handler: s.Handler(),
		TLSConfig: &tls.Config{
			MinVersion:     tls.VersionTLS12,
			GetCertificate: s.certs.GetCertificate,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       90 * time.Second,
		ErrorLog:          log.New(&serverErrors{logger: s.logger, every: time.Minute}, "", 0),
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	s.ready.Store(true)
	s.logger.Info("webhook serving", "addr", ln.Addr().String(), "image", s.sidecar.Image)

	select {
	case err := <-done:
		s.ready.Store(false)
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.ready.Store(false)
	s.logger.Info("webhook shutting down")
	shutdown, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	if err := srv.Shutdown(shutdown); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// recoverPanics answers 500 instead of dropping the connection, and logs
// the stack; the server goes on serving.
func (s *Server) recoverPanics(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.logger.Error("panic in handler", "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				http.Error(w, "internal error", http.StatusInternalServerError)
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// badRequest is an AdmissionReview that cannot be answered.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func (s *Server) serveMutate(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		s.fail(w, badRequest{"read body: " + err.Error()})
		return
	}
	review, err := decodeReview(body)
	if err != nil {
		s.fail(w, err)
		return
	}
	resp, err := s.admit(review.Request)
	if err != nil {
		s.fail(w, err)
		return
	}
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		s.logger.Debug("write response", "err", err)
	}
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var bad badRequest
	if errors.As(err, &bad) {
		code = http.StatusBadRequest
	}
	s.logger.Warn("admission request refused", "status", code, "err", err)
	http.Error(w, err.Error(), code)
}

// decodeReview accepts only an admission.k8s.io/v1 AdmissionReview with a
// request, which is all that the webhook's configuration asks for.
func decodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	var review admissionv1.AdmissionReview
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&review); err != nil {
		return nil, badRequest{"body is not an AdmissionReview: " + err.Error()}
	}
	if dec.More() {
		return nil, badRequest{"body has data after the AdmissionReview"}
	}
	if gvk := review.GroupVersionKind(); gvk != admissionv1.SchemeGroupVersion.WithKind("AdmissionReview") {
		return nil, badRequest{fmt.Sprintf("body is apiVersion %q kind %q, want admission.k8s.io/v1 AdmissionReview", review.APIVersion, review.Kind)}
	}
	if review.Request == nil {
		return nil, badRequest{"AdmissionReview has no request"}
	}
	if review.Request.UID == "" {
		return nil, badRequest{"AdmissionReview request has no uid"}
	}
	return &review, nil
}

// admit answers one request. It never denies: what the webhook cannot
// handle is allowed unchanged, with a warning.
func (s *Server) admit(req *admissionv1.AdmissionRequest) (*admissionv1.AdmissionResponse, error) {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	log := s.logger.With("uid", req.UID, "namespace", req.Namespace, "name", req.Name, "operation", req.Operation)

	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return resp, nil
	}
	if req.Kind != deploymentKind {
		log.Warn("not a Deployment, allowed unchanged: check the MutatingWebhookConfiguration's rules", "kind", req.Kind.String())
		resp.Warnings = []string{"podtracer: only apps/v1 Deployments are injected, not " + req.Kind.Kind}
		return resp, nil
	}
	if raw := bytes.TrimSpace(req.Object.Raw); len(raw) == 0 || string(raw) == "null" {
		return nil, badRequest{"AdmissionReview request has no object"}
	}
	var d appsv1.Deployment
	if err := json.Unmarshal(req.Object.Raw, &d); err != nil {
		return nil, badRequest{"request object is not a Deployment: " + err.Error()}
	}
	if gvk := d.GroupVersionKind(); !gvk.Empty() && gvk != appsv1.SchemeGroupVersion.WithKind("Deployment") {
		return nil, badRequest{fmt.Sprintf("request kind is Deployment but its object is apiVersion %q kind %q", d.APIVersion, d.Kind)}
	}
	if d.Namespace == "" {
		d.Namespace = req.Namespace
	}

	res, err := s.safeMutate(&d)
	if err != nil {
		log.Error("mutation failed, allowed unchanged", "err", err)
		resp.Warnings = []string{"podtracer: internal error, Deployment left unchanged"}
		return resp, nil
	}
	for _, w := range res.Warnings {
		resp.Warnings = append(resp.Warnings, "podtracer: "+w)
	}
	if len(res.Warnings) > 0 {
		log.Warn("deployment not fully handled", "action", res.Action, "warnings", res.Warnings)
	}

	// The patch is computed between two encodings of the typed object, so
	// fields this webhook's API types do not know are never touched.
	before, err := json.Marshal(&d)
	if err != nil {
		return nil, fmt.Errorf("encode deployment: %w", err)
	}
	after, err := json.Marshal(res.Deployment)
	if err != nil {
		return nil, fmt.Errorf("encode mutated deployment: %w", err)
	}
	// A sidecar taken out of a list of containers is one remove, one put
	// in is one add, and the rest is diffed with the lists aligned: a diff
	// of the two lists would rewrite each container after it, field by
	// field, into its place, and fields these types do not know would
	// stay behind on the wrong container.
	ops, aligned := alignSidecar(&d, res.Deployment)
	base := before
	if len(ops) > 0 {
		if base, err = json.Marshal(aligned); err != nil {
			return nil, fmt.Errorf("encode deployment: %w", err)
		}
	}
	rest, err := jsonpatch.CreatePatch(base, after)
	if err != nil {
		return nil, fmt.Errorf("create patch: %w", err)
	}
	ops = append(ops, rest...)
	if len(ops) > 0 {
		if err := exactValues(ops, after); err != nil {
			return nil, fmt.Errorf("create patch: %w", err)
		}
		patch, err := json.Marshal(ops)
		if err != nil {
			return nil, fmt.Errorf("encode patch: %w", err)
		}
		if err := checkPatch(before, after, patch); err != nil {
			// Allowed unchanged rather than changed into something else.
			log.Error("patch does not give the mutated Deployment, allowed unchanged", "err", err)
			resp.Warnings = append(resp.Warnings, "podtracer: internal error, Deployment left unchanged")
			return resp, nil
		}
		resp.Patch = patch
		resp.PatchType = new(admissionv1.PatchTypeJSONPatch)
	}
	resp.AuditAnnotations = map[string]string{"action": string(res.Action)}
	log.Info("deployment admitted", "action", res.Action, "patch_ops", len(ops))
	return resp, nil
}

// exactValues sets the value of each add and replace operation to the one
// in after, decoded with json.Number: CreatePatch decodes numbers as
// float64, which rounds integers above 2^53 (an int64 field of a container
// that moved in the list, say).
func exactValues(ops []jsonpatch.Operation, after []byte) error {
	dec := json.NewDecoder(bytes.NewReader(after))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return err
	}
	for i, op := range ops {
		if op.Operation != "add" && op.Operation != "replace" {
			continue
		}
		v, err := pointerValue(doc, op.Path)
		if err != nil {
			return err
		}
		ops[i].Value = v
	}
	return nil
}

// pointerValue is the value at a JSON pointer (RFC 6901) in a decoded
// document.
func pointerValue(doc any, pointer string) (any, error) {
	if pointer == "" {
		return doc, nil
	}
	tokens := strings.Split(strings.TrimPrefix(pointer, "/"), "/")
	for _, tok := range tokens {
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		switch node := doc.(type) {
		case map[string]any:
			v, ok := node[tok]
			if !ok {
				return nil, fmt.Errorf("patch path %s: no %q", pointer, tok)
			}
			doc = v
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(node) {
				return nil, fmt.Errorf("patch path %s: no index %q", pointer, tok)
			}
			doc = node[i]
		default:
			return nil, fmt.Errorf("patch path %s: %q is in a scalar", pointer, tok)
		}
	}
	return doc, nil
}

// alignSidecar returns the operations that take the sidecar out of
// before's lists of containers that after has it in no longer, and put it
// into those after has it in newly (the init containers, where it moves
// from the containers of older webhooks), and before with them applied.
// Values are left to exactValues.
func alignSidecar(before, after *appsv1.Deployment) ([]jsonpatch.Operation, *appsv1.Deployment) {
	named := func(c corev1.Container) bool { return c.Name == ContainerName }
	aligned := before.DeepCopy()
	var ops []jsonpatch.Operation
	lists := []struct {
		path      string
		was, will *[]corev1.Container
	}{
		{"/spec/template/spec/containers", &aligned.Spec.Template.Spec.Containers, &after.Spec.Template.Spec.Containers},
		{"/spec/template/spec/initContainers", &aligned.Spec.Template.Spec.InitContainers, &after.Spec.Template.Spec.InitContainers},
	}
	for _, l := range lists {
		if i := slices.IndexFunc(*l.was, named); i >= 0 && !slices.ContainsFunc(*l.will, named) {
			ops = append(ops, jsonpatch.NewOperation("remove", fmt.Sprintf("%s/%d", l.path, i), nil))
			*l.was = slices.Delete(*l.was, i, i+1)
		}
	}
	for _, l := range lists {
		i := slices.IndexFunc(*l.will, named)
		if i < 0 || slices.ContainsFunc(*l.was, named) {
			continue
		}
		if len(*l.was) == 0 {
			// No list to add to (an empty one is left out of the JSON):
			// the whole list, the sidecar alone.
			ops = append(ops, jsonpatch.NewOperation("add", l.path, nil))
		} else {
			ops = append(ops, jsonpatch.NewOperation("add", fmt.Sprintf("%s/%d", l.path, i), nil))
		}
		*l.was = slices.Insert(*l.was, i, (*l.will)[i])
	}
	return ops, aligned
}

// checkPatch makes sure that patch turns before into after exactly, as the
// API server will apply it: a wrong patch would change the Deployment into
// something that neither the user nor the webhook asked for.
func checkPatch(before, after, patch []byte) error {
	p, err := jsonpatch5.DecodePatch(patch)
	if err != nil {
		return err
	}
	patched, err := p.Apply(before)
	if err != nil {
		return err
	}
	var d appsv1.Deployment
	if err := json.Unmarshal(patched, &d); err != nil {
		return err
	}
	again, err := json.Marshal(&d)
	if err != nil {
		return err
	}
	if !bytes.Equal(again, after) {
		return errors.New("patched Deployment differs from the mutated one")
	}
	return nil
}

func (s *Server) safeMutate(d *appsv1.Deployment) (res Result, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("panic: %v\n%s", v, debug.Stack())
		}
	}()
	return s.mutate(d, s.sidecar), nil
}
