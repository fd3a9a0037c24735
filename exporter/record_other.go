package exporter

import (
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/dbconv"
	"go.opentelemetry.io/otel/semconv/v1.43.0/messagingconv"
	"go.opentelemetry.io/otel/semconv/v1.43.0/rpcconv"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/tracer"
)

// The semantic conventions podtracer follows are v1.43.0, as the SDK's
// resource does. Where an issue or an older backend still keys on an
// attribute that version renamed, the older one is added beside it:
// rpc.system, rpc.service and rpc.grpc.status_code.
var (
	rpcSystemOld   = attribute.Key("rpc.system")
	rpcServiceOld  = attribute.Key("rpc.service")
	rpcGRPCCodeOld = attribute.Key("rpc.grpc.status_code")
)

// grpcCodeNames are the gRPC status codes as rpc.response.status_code names
// them.
var grpcCodeNames = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

func grpcCodeName(code int) string {
	if code >= 0 && code < len(grpcCodeNames) {
		return grpcCodeNames[code]
	}
	return strconv.Itoa(code)
}

// rpcMethodOther is rpc.method for a method the server does not recognise.
const rpcMethodOther = "_OTHER"

// unknownRPCMethod tells whether the server did not recognise the method
// of a gRPC call, as far as the wire shows: it answered UNIMPLEMENTED, or
// the path was not /service/method. A server answers UNIMPLEMENTED to any
// path it has no handler for, which is what a scanner sends.
func unknownRPCMethod(r *tracer.Request) bool {
	return r.GRPCStatus == 12 || r.RPCService == "" || r.RPCMethod == ""
}

// grpcError applies the gRPC conventions: a client failed on any status but
// OK; a server only on the codes that mean it failed, not the caller.
func grpcError(role tracer.Role, code int) bool {
	if code < 0 || code == 0 {
		return false
	}
	if role == tracer.RoleClient {
		return true
	}
	switch code {
	case 2, 4, 12, 13, 14, 15: // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
		return true
	}
	return false
}

// otherInstruments are the histograms of the protocols other than HTTP,
// made on a process's first such request.
type otherInstruments struct {
	rpcServer, rpcClient *histogram
	dbClient             *histogram
	messagingClient      *histogram
}

// dbDurationBounds are db.client.operation.duration's buckets, in
// seconds, as semantic conventions 1.43 recommend (database-metrics.md).
var dbDurationBounds = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}

// messagingDurationBounds are messaging.client.operation.duration's
// (messaging-metrics.md), the same as HTTP's and RPC's.
var messagingDurationBounds = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

func (s *process) otherInstruments() *otherInstruments {
	if s.other != nil || s.mp == nil {
		return s.other
	}
	m := s.hists
	o := &otherInstruments{}
	// Errors are impossible with these fixed, valid names; the returned
	// instrument is a no-op then anyway.
	rs, _ := rpcconv.NewServerCallDuration(m)
	rc, _ := rpcconv.NewClientCallDuration(m)
	// The database and messaging constructors carry no buckets: the
	// conventions' own are given here.
	dc, _ := dbconv.NewClientOperationDuration(m, metric.WithExplicitBucketBoundaries(dbDurationBounds...))
	mc, _ := messagingconv.NewClientOperationDuration(m, metric.WithExplicitBucketBoundaries(messagingDurationBounds...))
	o.rpcServer, o.rpcClient, o.dbClient, o.messagingClient = rs.Inst().(*histogram), rc.Inst().(*histogram), dc.Inst().(*histogram),
		mc.Inst().(*histogram)
	s.other = o
	return o
}

// otherKey is what describeOther reads of a request.
type otherKey struct {
	protocol, rpcService, rpcMethod, msgOp, msgDest, clientID string
	dbSystem, dbOp, dbCollection, dbSummary, dbNamespace      string
	dbQuery                                                   string
	errorCode                                                 string
	role                                                      tracer.Role
	grpcStatus, partition, port                               int
	host                                                      string
}

func otherKeyOf(r *tracer.Request, host string, port int) otherKey {
	return otherKey{protocol: r.Protocol, rpcService: r.RPCService, rpcMethod: r.RPCMethod, msgOp: r.MessagingOperation,
		msgDest: r.MessagingDestination, clientID: r.ClientID, dbSystem: r.DBSystem, dbOp: r.DBOperation, dbCollection: r.DBCollection,
		dbSummary: r.DBSummary, dbNamespace: r.DBNamespace, dbQuery: r.DBQuery, errorCode: r.ErrorCode, role: r.Role, grpcStatus: r.GRPCStatus,
		partition: r.Partition, port: port, host: host}
}

// otherDesc is describeOther's description of the requests of a key, and
// its metric attributes as a set (made when first needed).
type otherDesc struct {
	key          otherKey
	name         string
	span, metric []attribute.KeyValue
	failed       bool
	errType      string
	set          *attribute.Set
	// point is set's point in the description's histogram, as
	// recordCached keeps it.
	point *histPoint
	// wire is span's OTLP encoding (made when first needed): a span of
	// this description copies it instead of writing each attribute.
	wire []byte
}

// describe is describeOther, remembered for the next requests: a
// process's requests mostly repeat a few commands, databases and
// statuses (all but the peer), and a description is a dozen allocations.
// The last few are kept (a client alternating GET and SET, say), the
// oldest replaced first.
func (s *process) describe(r *tracer.Request, host string, port int) *otherDesc {
	key := otherKeyOf(r, host, port)
	for _, d := range s.lastOther {
		if d != nil && d.key == key {
			return d
		}
	}
	d := &otherDesc{key: key}
	d.name, d.span, d.metric, d.failed, d.errType = describeOther(r, host, port)
	if limit := s.cfg.valueLimit(); limit >= 0 {
		for i, kv := range d.span {
			if kv.Value.Type() == attribute.STRING {
				d.span[i].Value = attribute.StringValue(truncateValue(kv.Value.AsString(), limit))
			}
		}
	}
	s.lastOther[s.nextOther] = d
	s.nextOther = (s.nextOther + 1) % len(s.lastOther)
	return d
}

// recordOther turns a gRPC, database or Kafka exchange into a span and a
// metric point.
func (s *process) recordOther(r *tracer.Request) {
	host, port := s.otherEndpoint(r)
	d := s.describe(r, host, port)
	name, spanAttrs, failed, errType := d.name, d.span, d.failed, d.errType

	// A broker in the pod serves its clients' produce and fetch requests:
	// its spans are SERVER. A producer's send is CLIENT, not PRODUCER: the
	// conventions keep PRODUCER for a send whose span is its messages'
	// creation context, and the agent writes no context into messages.
	kind := trace.SpanKindServer
	if r.Role == tracer.RoleClient {
		kind = trace.SpanKindClient
	}
	ctx, rec := s.begin(r, kind, name)
	if rec != nil {
		a := s.spanAttrs(rec)
		if a.kvs {
			rec.attrs = append(rec.attrs[:0], spanAttrs...)
		}
		if a.wire {
			if d.wire == nil {
				d.wire = appendKeyValues([]byte{}, fSpanAttributes, spanAttrs)
			}
			rec.wire = append(rec.wire, d.wire...)
		}
		if r.Remote.IsValid() {
			if r.Remote.Addr() != s.lastPeer || s.lastPeerStr == "" {
				// Unmapped, as HTTP's (addrString): a dual-stack socket's
				// IPv4 peer is a.b.c.d, not ::ffff:a.b.c.d.
				s.lastPeer, s.lastPeerStr = r.Remote.Addr(), r.Remote.Addr().Unmap().String()
			}
			a.str(semconv.NetworkPeerAddressKey, s.lastPeerStr)
			a.int(semconv.NetworkPeerPortKey, int64(r.Remote.Port()))
		}
		if r.Protocol == tracer.ProtoKafka && r.MessageCount > 1 {
			// A batch's size, per request (not in the description, which
			// many sends share); the conventions want none on a single
			// message's span.
			a.int(semconv.MessagingBatchMessageCountKey, int64(r.MessageCount))
		}
		if r.Protocol == tracer.ProtoGRPC && r.Role == tracer.RoleServer {
			// The caller: the one proxies name, else the peer (as for HTTP).
			if client := s.forwardedFor(r); client != "" {
				a.str(semconv.ClientAddressKey, client)
			} else if r.Remote.IsValid() {
				a.str(semconv.ClientAddressKey, s.lastPeerStr)
			}
		}
		if failed {
			rec.status, rec.statusMsg = codes.Error, r.ErrorMessage
			if rec.statusMsg == "" {
				rec.statusMsg = errType
			}
		}
		s.finish(rec)
	}
	if s.mp == nil {
		return
	}
	o := s.otherInstruments()
	var h *histogram
	switch {
	case r.Protocol == tracer.ProtoGRPC && r.Role == tracer.RoleClient:
		h = o.rpcClient
	case r.Protocol == tracer.ProtoGRPC:
		h = o.rpcServer
	case r.Protocol == tracer.ProtoKafka && r.Role == tracer.RoleClient:
		h = o.messagingClient
	case r.Role == tracer.RoleClient:
		h = o.dbClient
	default:
		return // a database or broker observed from its own side: spans only
	}
	if d.set == nil {
		set := attribute.NewSet(d.metric...)
		d.set = &set
	}
	// The exemplar's time is the exchange's end, not a clock read, as for
	// HTTP.
	h.recordCached(&d.point, *d.set, max(r.End.Sub(r.Start).Seconds(), 0), trace.SpanContextFromContext(ctx), r.End)
}

// otherEndpoint is server.address and server.port of a gRPC, database or
// Kafka exchange. A gRPC call's :authority names the server the client
// dialed (the conventions' "RPC server host name", as Host does for
// HTTP): a Service's name rather than whichever of its pods' addresses
// the connection went to. Without one, or for the other protocols, it is
// the connection's end (peerEndpoint).
func (s *process) otherEndpoint(r *tracer.Request) (string, int) {
	host, port := s.peerEndpoint(r)
	if r.Protocol == tracer.ProtoGRPC && r.Host != "" {
		host = strings.TrimSuffix(strings.TrimPrefix(r.Host, "["), "]")
		if r.HostPort != 0 {
			port = r.HostPort
		}
	}
	return host, port
}

// peerEndpoint is server.address and server.port: the remote end for a
// client, the local end for a server.
func (s *process) peerEndpoint(r *tracer.Request) (string, int) {
	if r.Role == tracer.RoleClient {
		return addrString(r.Remote, &s.lastRemote, &s.lastRemoteStr), int(r.Remote.Port())
	}
	return addrString(r.Local, &s.lastLocal, &s.lastLocalStr), int(r.Local.Port())
}

// kafkaOperationName is messaging.operation.name, Kafka's own name of
// the operation whose type (messaging.operation.type) is op: a consumer
// polls (the Kafka conventions' "poll"), a producer sends.
func kafkaOperationName(op string) string {
	if op == "receive" {
		return "poll"
	}
	return op
}

// describeOther returns the span name, span attributes (but the peer's,
// which recordOther adds) and the (low cardinality) metric attributes of
// a non-HTTP exchange, and whether and how it failed.
func describeOther(r *tracer.Request, host string, port int) (name string, span, metric []attribute.KeyValue, failed bool, errType string) {
	common := []attribute.KeyValue{semconv.ServerAddress(host), semconv.ServerPort(port)}
	switch r.Protocol {
	case tracer.ProtoGRPC:
		full := r.RPCService + "/" + r.RPCMethod
		method := full
		if unknownRPCMethod(r) {
			// The server does not have the method: the path is whatever the
			// caller sent, a series per path on the duration metric. The
			// conventions want "_OTHER", and the path in
			// rpc.method_original on the span.
			method = rpcMethodOther
			span = append(span, semconv.RPCMethodOriginal(full))
		}
		name = method
		if method == rpcMethodOther {
			name = "grpc" // rpc-spans.md: {rpc.system.name} when the method is _OTHER
		}
		metric = append(metric, semconv.RPCSystemNameGRPC, semconv.RPCMethod(method))
		span = append(span, semconv.RPCSystemNameGRPC, semconv.RPCMethod(method), rpcSystemOld.String("grpc"), rpcServiceOld.String(r.RPCService))
		if r.GRPCStatus >= 0 {
			code := grpcCodeName(r.GRPCStatus)
			metric = append(metric, semconv.RPCResponseStatusCode(code))
			span = append(span, semconv.RPCResponseStatusCode(code), rpcGRPCCodeOld.Int(r.GRPCStatus))
			if grpcError(r.Role, r.GRPCStatus) {
				failed, errType = true, code
			}
		}
	case tracer.ProtoKafka:
		op := kafkaOperationName(r.MessagingOperation)
		name = op
		if r.MessagingDestination != "" {
			name += " " + r.MessagingDestination
		}
		base := []attribute.KeyValue{semconv.MessagingSystemKafka, semconv.MessagingOperationName(op)}
		// The operation type is the client's; a broker's span would be
		// taken for a publisher's or a consumer's.
		switch {
		case r.Role != tracer.RoleClient:
		case r.MessagingOperation == "send":
			base = append(base, semconv.MessagingOperationTypeSend)
		case r.MessagingOperation == "receive":
			base = append(base, semconv.MessagingOperationTypeReceive)
		}
		if r.MessagingDestination != "" {
			base = append(base, semconv.MessagingDestinationName(r.MessagingDestination))
		}
		metric = append(metric, base...)
		span = append(span, base...)
		if r.Partition >= 0 {
			span = append(span, semconv.MessagingDestinationPartitionID(strconv.Itoa(r.Partition)))
		}
		if r.ClientID != "" {
			span = append(span, semconv.MessagingClientID(r.ClientID))
		}
		if r.ErrorCode != "" {
			failed, errType = true, r.ErrorCode
		}
	default: // databases
		system := r.Protocol
		if r.DBSystem != "" {
			system = r.DBSystem // MariaDB, in MySQL's protocol
		}
		switch {
		case r.DBSummary != "":
			// The conventions' name when there is a summary: it names
			// every table of a join or a subquery.
			name = r.DBSummary
		case r.DBOperation != "" && r.DBCollection != "":
			name = r.DBOperation + " " + r.DBCollection
		case r.DBOperation != "":
			name = r.DBOperation
		case r.DBCollection != "":
			name = r.DBCollection
		case r.DBNamespace != "" && system != tracer.ProtoRedis:
			// The conventions' {target} without an operation; Redis's
			// namespace is a number, which they keep out of its names.
			name = r.DBNamespace
		default:
			name = system
		}
		base := []attribute.KeyValue{semconv.DBSystemNameKey.String(system)}
		if r.DBOperation != "" {
			base = append(base, semconv.DBOperationName(r.DBOperation))
		}
		if r.DBCollection != "" {
			base = append(base, semconv.DBCollectionName(r.DBCollection))
		}
		if r.DBNamespace != "" {
			base = append(base, semconv.DBNamespace(r.DBNamespace))
		}
		if r.ErrorCode != "" {
			base = append(base, semconv.DBResponseStatusCode(r.ErrorCode))
			failed, errType = true, r.ErrorCode
		}
		if r.DBSummary != "" {
			// On the metric too, as the conventions recommend: a
			// summary has no literal, so its series are the statements'
			// shapes, bounded by the cardinality limit as any.
			base = append(base, semconv.DBQuerySummary(r.DBSummary))
		}
		metric = append(metric, base...)
		span = append(span, base...)
		if r.DBQuery != "" {
			span = append(span, semconv.DBQueryText(r.DBQuery))
		}
	}
	if failed {
		metric = append(metric, semconv.ErrorTypeKey.String(errType))
		span = append(span, semconv.ErrorTypeKey.String(errType))
	}
	if r.Role == tracer.RoleClient {
		metric = append(metric, common...)
	}
	span = append(span, common...)
	return name, span, metric, failed, errType
}
