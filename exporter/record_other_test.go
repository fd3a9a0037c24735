package exporter

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/podtracer/podtracer/internal/otlptest"
	"github.com/podtracer/podtracer/tracer"
)

func otherReq(proto string, role tracer.Role) *tracer.Request {
	r := serverReq()
	r.Protocol, r.Role = proto, role
	r.Method, r.Path, r.Route, r.StatusCode, r.Host, r.HostPort, r.ProtocolVersion, r.UserAgent = "", "", "", 0, "", 0, "", ""
	r.Parent = trace.SpanContext{}
	r.Local = netip.MustParseAddrPort("10.0.0.2:40000")
	r.Remote = netip.MustParseAddrPort("10.0.0.9:5432")
	r.GRPCStatus, r.Partition = -1, -1
	return r
}

func TestDatabaseSpan(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	r := otherReq(tracer.ProtoPostgreSQL, tracer.RoleClient)
	r.DBOperation, r.DBCollection, r.DBNamespace, r.DBQuery, r.DBSummary = "SELECT", "users", "shop", "SELECT * FROM users WHERE id = ?", "SELECT users"
	e.Export(r)
	bad := otherReq(tracer.ProtoPostgreSQL, tracer.RoleClient)
	bad.DBOperation, bad.ErrorCode, bad.ErrorMessage = "INSERT", "23505", "duplicate key"
	e.Export(bad)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(find(s, "SELECT users")) == 1 && len(find(s, "INSERT")) == 1 })
	s := find(spans, "SELECT users")[0]
	if s.Kind != trace.SpanKindClient || s.StatusCode != codes.Unset {
		t.Errorf("kind %v status %v", s.Kind, s.StatusCode)
	}
	checkAttrs(t, "db span", s.Attributes, map[string]any{
		"db.system.name":       "postgresql",
		"db.operation.name":    "SELECT",
		"db.collection.name":   "users",
		"db.namespace":         "shop",
		"db.query.text":        "SELECT * FROM users WHERE id = ?",
		"db.query.summary":     "SELECT users",
		"server.address":       "10.0.0.9",
		"server.port":          int64(5432),
		"network.peer.address": "10.0.0.9",
		"network.peer.port":    int64(5432),
	})
	f := find(spans, "INSERT")[0]
	if f.StatusCode != codes.Error || f.StatusMessage != "duplicate key" || f.Attributes["db.response.status_code"] != "23505" || f.Attributes["error.type"] != "23505" {
		t.Errorf("failed span: status %v %q attrs %v", f.StatusCode, f.StatusMessage, f.Attributes)
	}
	points := rcv.WaitMetric(t, waitFor, func(m []otlptest.MetricPoint) bool {
		for _, p := range m {
			if p.Name == "db.client.operation.duration" && p.Attributes["db.operation.name"] == "SELECT" {
				return true
			}
		}
		return false
	})
	for _, p := range points {
		if _, ok := p.Attributes["db.query.text"]; ok {
			t.Errorf("%s has db.query.text: cardinality", p.Name)
		}
		if p.Name == "db.client.operation.duration" && p.Attributes["db.operation.name"] == "SELECT" && p.Attributes["db.query.summary"] != "SELECT users" {
			t.Errorf("%s: db.query.summary %v, want the statement's summary (conventions: recommended)", p.Name, p.Attributes["db.query.summary"])
		}
		// Semantic conventions 1.43, database-metrics.md.
		if want := []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10}; p.Name == "db.client.operation.duration" && !reflect.DeepEqual(p.Bounds, want) {
			t.Errorf("%s buckets %v, want the conventions' %v", p.Name, p.Bounds, want)
		}
	}
}

// A MySQL-protocol server that said it is MariaDB: db.system.name
// "mariadb" on the span and the metric, and as the span's name without
// an operation; the description of the same statement to a MySQL server
// is not reused for it.
func TestMariaDBSystem(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	my := otherReq(tracer.ProtoMySQL, tracer.RoleClient)
	my.DBOperation = "SELECT"
	e.Export(my)
	maria := otherReq(tracer.ProtoMySQL, tracer.RoleClient)
	maria.DBOperation, maria.DBSystem = "SELECT", "mariadb"
	e.Export(maria)
	bare := otherReq(tracer.ProtoMySQL, tracer.RoleClient)
	bare.DBSystem = "mariadb"
	e.Export(bare)
	// Without an operation, the conventions' {target}: the namespace
	// (not Redis's, a number they keep out of names).
	ns := otherReq(tracer.ProtoPostgreSQL, tracer.RoleClient)
	ns.DBNamespace = "shop"
	e.Export(ns)
	redis := otherReq(tracer.ProtoRedis, tracer.RoleClient)
	redis.DBNamespace = "3"
	e.Export(redis)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= 5 })
	systems := map[any]int{}
	for _, s := range find(spans, "SELECT") {
		systems[s.Attributes["db.system.name"]]++
	}
	if systems["mysql"] != 1 || systems["mariadb"] != 1 {
		t.Errorf("db.system.name of the SELECTs: %v, want one mysql and one mariadb", systems)
	}
	if s := find(spans, "mariadb"); len(s) != 1 || s[0].Attributes["db.system.name"] != "mariadb" {
		t.Errorf("span without an operation: %v", s)
	}
	if s := find(spans, "shop"); len(s) != 1 || s[0].Attributes["db.namespace"] != "shop" {
		t.Errorf("no span named by its namespace (no operation, no table): %v", spans)
	}
	if s := find(spans, "redis"); len(s) != 1 || s[0].Attributes["db.namespace"] != "3" {
		t.Errorf("no Redis span named by its system (no operation; its namespace is a number): %v", spans)
	}
	rcv.WaitMetric(t, waitFor, pointWith("db.client.operation.duration", "db.system.name", "mariadb"))
}

func TestGRPCSpans(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	srv := otherReq(tracer.ProtoGRPC, tracer.RoleServer)
	srv.RPCService, srv.RPCMethod, srv.GRPCStatus = "helloworld.Greeter", "SayHello", 5 // NOT_FOUND: not the server's failure
	srv.Remote = netip.MustParseAddrPort("[::ffff:10.0.0.7]:6000")                      // a dual-stack socket's IPv4 peer
	e.Export(srv)
	cli := otherReq(tracer.ProtoGRPC, tracer.RoleClient)
	cli.RPCService, cli.RPCMethod, cli.GRPCStatus = "helloworld.Greeter", "SayHello", 5
	e.Export(cli)
	spans := rcv.WaitSpans(t, waitFor, spansNamed("helloworld.Greeter/SayHello", 2))
	for _, s := range find(spans, "helloworld.Greeter/SayHello") {
		if s.Attributes["rpc.system.name"] != "grpc" || s.Attributes["rpc.method"] != "helloworld.Greeter/SayHello" ||
			s.Attributes["rpc.response.status_code"] != "NOT_FOUND" || s.Attributes["rpc.grpc.status_code"] != int64(5) || s.Attributes["rpc.service"] != "helloworld.Greeter" {
			t.Errorf("%v attrs %v", s.Kind, s.Attributes)
		}
		if s.Kind == trace.SpanKindServer && (s.Attributes["network.peer.address"] != "10.0.0.7" || s.Attributes["client.address"] != "10.0.0.7") {
			t.Errorf("server span's peer %v, client %v: want 10.0.0.7 unmapped, as HTTP's", s.Attributes["network.peer.address"], s.Attributes["client.address"])
		}
		wantErr := s.Kind == trace.SpanKindClient
		if (s.StatusCode == codes.Error) != wantErr {
			t.Errorf("%v span status %v", s.Kind, s.StatusCode)
		}
	}
	rcv.WaitMetric(t, waitFor, func(m []otlptest.MetricPoint) bool {
		var server, client bool
		for _, p := range m {
			server = server || p.Name == "rpc.server.call.duration"
			client = client || p.Name == "rpc.client.call.duration" && p.Attributes["server.port"] == int64(5432)
		}
		return server && client
	})
}

// A gRPC call's server.address is the host its client dialed (the
// :authority, "RPC server host name"), not the address of the pod its
// connection reached; without an authority, the connection's end. Its
// port is the authority's, or the connection's when the authority has
// none.
func TestGRPCServerAddressIsAuthority(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	for _, c := range []struct {
		method, host string
		hostPort     int
	}{{"ByName", "orders.shop.svc", 50051}, {"NoPort", "orders", 0}, {"NoAuthority", "", 0}} {
		r := otherReq(tracer.ProtoGRPC, tracer.RoleClient)
		r.RPCService, r.RPCMethod, r.GRPCStatus = "shop.Orders", c.method, 0
		r.Host, r.HostPort = c.host, c.hostPort
		e.Export(r)
	}
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= 3 })
	want := map[string][2]any{
		"shop.Orders/ByName":      {"orders.shop.svc", int64(50051)},
		"shop.Orders/NoPort":      {"orders", int64(5432)},
		"shop.Orders/NoAuthority": {"10.0.0.9", int64(5432)},
	}
	for name, w := range want {
		s := find(spans, name)
		if len(s) != 1 || s[0].Attributes["server.address"] != w[0] || s[0].Attributes["server.port"] != w[1] {
			t.Errorf("%s: %v, want server.address %v, server.port %v", name, s, w[0], w[1])
		}
	}
	rcv.WaitMetric(t, waitFor, pointWith("rpc.client.call.duration", "server.address", "orders.shop.svc"))
}

// gRPC calls to methods the server does not have (it answers
// UNIMPLEMENTED): the path is the caller's choice, so a scanner would make a
// series per path. rpc.method is "_OTHER" then, the path stays on the span.
func TestGRPCUnknownMethod(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	for i := range 20 {
		r := otherReq(tracer.ProtoGRPC, tracer.RoleServer)
		r.RPCService, r.RPCMethod, r.GRPCStatus = fmt.Sprintf("scan%d.Svc", i), "Probe", 12
		e.Export(r)
	}
	// The span is named after the system when the method is _OTHER
	// (rpc-spans.md, "Name").
	spans := rcv.WaitSpans(t, waitFor, spansNamed("grpc", 20))
	if s := find(spans, "grpc")[0]; s.Attributes["rpc.method"] != "_OTHER" || s.Attributes["rpc.method_original"] == nil {
		t.Errorf("attrs %v", s.Attributes)
	}
	points := rcv.WaitMetric(t, waitFor, func(m []otlptest.MetricPoint) bool {
		for _, p := range m {
			if p.Name == "rpc.server.call.duration" {
				return true
			}
		}
		return false
	})
	for _, p := range points {
		if p.Name == "rpc.server.call.duration" && p.Attributes["rpc.method"] != "_OTHER" {
			t.Errorf("metric point with rpc.method %v", p.Attributes["rpc.method"])
		}
	}
}

func TestKafkaSpans(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	send := otherReq(tracer.ProtoKafka, tracer.RoleClient)
	send.MessagingOperation, send.MessagingDestination, send.Partition, send.ClientID = "send", "orders", 3, "shop-producer"
	send.MessageCount = 3 // a batch
	send.Remote = netip.MustParseAddrPort("10.0.0.7:9092")
	e.Export(send)
	one := otherReq(tracer.ProtoKafka, tracer.RoleClient)
	one.MessagingOperation, one.MessagingDestination, one.MessageCount = "send", "events", 1
	e.Export(one)
	recv := otherReq(tracer.ProtoKafka, tracer.RoleClient)
	recv.MessagingOperation, recv.MessagingDestination = "receive", "orders"
	recv.Remote = netip.MustParseAddrPort("10.0.0.7:9092")
	e.Export(recv)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool {
		return len(find(s, "send orders")) == 1 && len(find(s, "poll orders")) == 1 && len(find(s, "send events")) == 1
	})
	if c, ok := find(spans, "send events")[0].Attributes["messaging.batch.message_count"]; ok {
		t.Errorf("a single message's send has messaging.batch.message_count %v: the conventions want none", c)
	}
	s := find(spans, "send orders")[0]
	if s.Kind != trace.SpanKindClient {
		t.Errorf("send kind %v, want CLIENT: no context of the span goes into the messages", s.Kind)
	}
	checkAttrs(t, "send", s.Attributes, map[string]any{
		"messaging.system":                   "kafka",
		"messaging.operation.name":           "send",
		"messaging.operation.type":           "send",
		"messaging.destination.name":         "orders",
		"messaging.destination.partition.id": "3",
		"messaging.client.id":                "shop-producer",
		"messaging.batch.message_count":      int64(3),
		"server.address":                     "10.0.0.7",
		"server.port":                        int64(9092),
		"network.peer.address":               "10.0.0.7",
		"network.peer.port":                  int64(9092),
	})
	if r := find(spans, "poll orders")[0]; r.Kind != trace.SpanKindClient || r.Attributes["messaging.operation.type"] != "receive" ||
		r.Attributes["messaging.operation.name"] != "poll" {
		t.Errorf("receive %v %v", r.Kind, r.Attributes)
	}
	points := rcv.WaitMetric(t, waitFor, func(m []otlptest.MetricPoint) bool {
		return len(findPoints(m, "messaging.client.operation.duration")) > 0
	})
	// Semantic conventions 1.43, messaging-metrics.md.
	want := []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}
	for _, p := range findPoints(points, "messaging.client.operation.duration") {
		if !reflect.DeepEqual(p.Bounds, want) {
			t.Errorf("%s buckets %v, want the conventions' %v", p.Name, p.Bounds, want)
		}
	}
}

// A broker in the pod serving a producer: its span is the server's, not a
// second producer's.
func TestKafkaBrokerSpan(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	produce := otherReq(tracer.ProtoKafka, tracer.RoleServer)
	produce.MessagingOperation, produce.MessagingDestination = "send", "orders"
	e.Export(produce)
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(find(s, "send orders")) == 1 })
	s := find(spans, "send orders")[0]
	if s.Kind != trace.SpanKindServer {
		t.Errorf("broker's span kind %v, want server", s.Kind)
	}
	if _, ok := s.Attributes["messaging.operation.type"]; ok {
		t.Errorf("broker's span has the client's messaging.operation.type: %v", s.Attributes)
	}
}

// findPoints returns the points of the metric named name.
func findPoints(points []otlptest.MetricPoint, name string) []otlptest.MetricPoint {
	var found []otlptest.MetricPoint
	for _, p := range points {
		if p.Name == name {
			found = append(found, p)
		}
	}
	return found
}

// describe remembers the last description, and gives describeOther's own
// for each request of a sequence where each differs from the one before
// it in one thing describeOther reads, or in nothing.
func TestDescribeRemembers(t *testing.T) {
	redis := tracer.Request{Protocol: tracer.ProtoRedis, Role: tracer.RoleServer, DBOperation: "GET", DBQuery: "GET ?", DBNamespace: "2",
		GRPCStatus: -1, Partition: -1}
	grpc := tracer.Request{Protocol: tracer.ProtoGRPC, Role: tracer.RoleServer, RPCService: "demo.Echo", RPCMethod: "Say", GRPCStatus: 0, Partition: -1}
	kafka := tracer.Request{Protocol: tracer.ProtoKafka, Role: tracer.RoleClient, MessagingOperation: "send", MessagingDestination: "orders",
		Partition: 3, ClientID: "c1", GRPCStatus: -1}
	steps := []func(r *tracer.Request){
		func(r *tracer.Request) {},
		func(r *tracer.Request) { r.DBOperation = "SET" },
		func(r *tracer.Request) { r.DBQuery = "SET ? ?" },
		func(r *tracer.Request) { r.DBNamespace = "" },
		func(r *tracer.Request) { r.DBCollection = "users" },
		func(r *tracer.Request) { r.ErrorCode = "WRONGTYPE" },
		func(r *tracer.Request) { r.Role = tracer.RoleClient },
		func(r *tracer.Request) { r.Protocol = tracer.ProtoPostgreSQL },
		func(r *tracer.Request) { *r = grpc },
		func(r *tracer.Request) { r.GRPCStatus = 12 },
		func(r *tracer.Request) { r.RPCMethod = "Other" },
		func(r *tracer.Request) { r.RPCService = "" },
		func(r *tracer.Request) { *r = kafka },
		func(r *tracer.Request) { r.Partition = 4 },
		func(r *tracer.Request) { r.ClientID = "c2" },
		func(r *tracer.Request) { r.MessagingDestination = "" },
		func(r *tracer.Request) { r.MessagingOperation = "receive" },
	}
	s := &process{}
	r := redis
	for i, step := range steps {
		step(&r)
		for _, port := range []int{6379, 6380} {
			for _, host := range []string{"10.0.0.1", "10.0.0.2"} {
				d := s.describe(&r, host, port)
				name, span, metric, failed, errType := describeOther(&r, host, port)
				if d.name != name || !reflect.DeepEqual(d.span, span) || !reflect.DeepEqual(d.metric, metric) || d.failed != failed || d.errType != errType {
					t.Errorf("step %d, %s:%d: remembered %+v, want %q %v %v %v %q", i, host, port, d, name, span, metric, failed, errType)
				}
				if again := s.describe(&r, host, port); again != d {
					t.Errorf("step %d: the same request described anew", i)
				}
				if i > 0 && port == 6379 && host == "10.0.0.1" {
					// A few descriptions are kept: the step before's too.
					prev := r
					prev.DBOperation, prev.RPCMethod, prev.Partition = "", "", 99
					s.describe(&prev, host, port)
					if again := s.describe(&r, host, port); again != d {
						t.Errorf("step %d: described anew after another", i)
					}
				}
			}
		}
	}
}

// A description's span attributes are encoded once and copied into each
// span of it: spans of descriptions that alternate, and of one
// description from peers that differ, each arrive with their own
// attributes, as the KeyValues describeOther gives, and their own peer.
func TestOtherSpansEncodedOnce(t *testing.T) {
	e, rcv, _ := startOTLP(t, Config{})
	var sent []*tracer.Request
	for range 3 {
		for _, r := range []*tracer.Request{otherReq(tracer.ProtoGRPC, tracer.RoleServer), otherReq(tracer.ProtoRedis, tracer.RoleClient),
			otherReq(tracer.ProtoGRPC, tracer.RoleServer)} {
			if r.Protocol == tracer.ProtoGRPC {
				r.RPCService, r.RPCMethod, r.GRPCStatus = "demo.Echo", "Say", 0
			} else {
				r.DBOperation, r.DBQuery = "GET", "GET ?"
			}
			r.Remote = netip.AddrPortFrom(r.Remote.Addr(), uint16(5000+len(sent)))
			r.TraceIDLow = uint64(1000 + len(sent)) // a span ID of its own
			e.Export(r)
			sent = append(sent, r)
		}
	}
	spans := rcv.WaitSpans(t, waitFor, func(s []otlptest.Span) bool { return len(s) >= len(sent) })
	byPort := map[int64]otlptest.Span{}
	for _, s := range spans {
		byPort[s.Attributes["network.peer.port"].(int64)] = s
	}
	for _, r := range sent {
		s, ok := byPort[int64(r.Remote.Port())]
		if !ok {
			t.Fatalf("no span from peer port %d", r.Remote.Port())
		}
		host, port := r.Local.Addr().String(), int(r.Local.Port())
		if r.Role == tracer.RoleClient {
			host, port = r.Remote.Addr().String(), int(r.Remote.Port())
		}
		_, attrs, _, _, _ := describeOther(r, host, port)
		want := map[string]any{"network.peer.address": r.Remote.Addr().String(), "network.peer.port": int64(r.Remote.Port())}
		if r.Protocol == tracer.ProtoGRPC {
			want["client.address"] = r.Remote.Addr().String() // a server's caller, per request
		}
		for _, kv := range attrs {
			want[string(kv.Key)] = kv.Value.AsInterface()
		}
		if !reflect.DeepEqual(s.Attributes, want) {
			t.Errorf("%s from port %d: attributes %v, want %v", r.Protocol, r.Remote.Port(), s.Attributes, want)
		}
	}
}
