// Package tracer turns the byte streams of the pod's connections into
// finished requests: per-connection state, protocol detection, one parser per
// protocol, request/response pairing and trace context.
package tracer

import (
	"net/netip"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/pod"
)

// Role says which end of a connection the observed process is.
type Role uint8

const (
	RoleUnknown Role = iota
	// RoleServer: the process received the request and sent the response.
	RoleServer
	// RoleClient: the process sent the request and received the response.
	RoleClient
)

func (r Role) String() string {
	switch r {
	case RoleServer:
		return "server"
	case RoleClient:
		return "client"
	}
	return "unknown"
}

// Request is one finished request/response exchange seen on the wire,
// everything the exporter needs to make a span and a metric point.
type Request struct {
	Role Role
	// Protocol is what was spoken: ProtoHTTP, ProtoGRPC, ProtoPostgreSQL,
	// ProtoMySQL, ProtoRedis or ProtoKafka.
	Protocol string

	// Process is the neighbour that served or sent the request.
	Process *pod.Process

	// Start and End are wall-clock times derived from kernel timestamps.
	Start, End time.Time

	// Network endpoints. For a server span the local end is the server; for a
	// client span the remote end is.
	Local, Remote netip.AddrPort
	// TLS is true when the connection was TLS: what was said is its
	// plaintext, read from the process's TLS library.
	TLS bool

	// HTTP fields.
	Method          string // "GET"; "_OTHER" never: unknown methods are kept verbatim and mapped by the exporter
	Path            string // without the query
	Query           string // without the leading '?'
	Route           string // low-cardinality route template, "" when unknown
	Host            string // Host header, without port when it had one
	HostPort        int    // port from the Host header, 0 when absent
	StatusCode      int    // 0 when no response was seen
	ProtocolVersion string // "1.0", "1.1"
	UserAgent       string
	// ForwardedFor is a server's original client behind proxies, as their
	// Forwarded or X-Forwarded-For names it, with port 0 when they gave
	// none; invalid when they named no address.
	ForwardedFor netip.AddrPort
	// OriginalHost and OriginalPort are the host and port a server's
	// client addressed in front of proxies, as they say (Forwarded's host,
	// X-Forwarded-Host), the port 0 when they gave none; "" when none
	// said. OriginalScheme is "http" or "https" as they say (Forwarded's
	// proto, X-Forwarded-Proto), "" when none did.
	OriginalHost   string
	OriginalPort   int
	OriginalScheme string
	RequestSize    int64 // body bytes
	ResponseSize   int64 // body bytes

	// Parent is the remote span context from an incoming (server) or
	// outgoing (client) traceparent header; invalid when absent.
	Parent trace.SpanContext
	// TraceIDLow, when not 0, is the low half of the trace ID the kernel
	// drew for a request without a parent, and picked it for a span by
	// (bpf.Event.TraceLow): the span's trace ID must end in it.
	TraceIDLow uint64

	// Truncated is true when the headers were longer than the captured
	// prefix, so some header fields may be missing.
	Truncated bool

	// Database client calls (PostgreSQL, MySQL, Redis).
	DBOperation  string // db.operation.name: "SELECT", "GET", "EXECUTE"
	DBCollection string // db.collection.name: the table, "" when unknown
	// DBSummary is db.query.summary, the SQL statement's operations and
	// targets ("SELECT orders customers"); "" when unknown.
	DBSummary   string
	DBNamespace string // db.namespace: the database, "" when unknown
	DBQuery     string // db.query.text, literals replaced by "?" unless the user enabled full text
	// DBSystem is db.system.name where it is not Protocol: "mariadb" for
	// a MySQL-protocol server whose greeting says it is MariaDB.
	DBSystem string

	// RPC (gRPC over HTTP/2).
	RPCService string // rpc.service: "helloworld.Greeter"
	RPCMethod  string // rpc.method: "SayHello"
	GRPCStatus int    // rpc.grpc.status_code; -1 when no status was seen

	// Messaging (Kafka).
	MessagingOperation   string // messaging.operation.type: "send" or "receive"
	MessagingDestination string // messaging.destination.name: the topic
	Partition            int    // messaging.destination.partition.id; -1 when unknown
	ClientID             string // messaging.client.id
	MessageCount         int    // messaging.batch.message_count of a send: the records it carried, 0 when unknown

	// ErrorCode and ErrorMessage are an error the server reported in the
	// protocol (SQLSTATE "42P01", MySQL 1146, Redis "ERR", a Kafka error
	// code); empty when it reported none. HTTP uses StatusCode instead.
	ErrorCode    string
	ErrorMessage string

	pooled bool // made by pooledRequest: Release recycles it
}

// requests recycles the Requests their consumer is done with (Release): a
// busy pod's tracer makes one per exchange, and each was an allocation of
// some 600 bytes for the garbage collector to scan and free.
var requests = sync.Pool{New: func() any { return new(Request) }}

// pooledRequest returns a Request with v's fields, which Release may
// recycle.
func pooledRequest(v Request) *Request {
	r := requests.Get().(*Request)
	*r = v
	r.pooled = true
	return r
}

// Release hands r back for reuse when its consumer (the exporter) is done
// with it: neither r nor anything that still points to it may be used
// afterwards. A Request the tracer did not make is left alone.
func (r *Request) Release() {
	if r.pooled {
		*r = Request{}
		requests.Put(r)
	}
}

// Protocols, as Request.Protocol names them.
const (
	ProtoHTTP       = "http" // HTTP/1.x, and HTTP/2 that is not gRPC (ProtocolVersion "2")
	ProtoGRPC       = "grpc"
	ProtoPostgreSQL = "postgresql"
	ProtoMySQL      = "mysql"
	ProtoRedis      = "redis"
	ProtoKafka      = "kafka"
)

// ServerAddr is the address of the server end of the connection.
func (r *Request) ServerAddr() netip.AddrPort {
	if r.Role == RoleClient {
		return r.Remote
	}
	return r.Local
}

// ClientAddr is the address of the client end of the connection.
func (r *Request) ClientAddr() netip.AddrPort {
	if r.Role == RoleClient {
		return r.Local
	}
	return r.Remote
}
