package exporter

import (
	"reflect"
	"testing"

	"github.com/podtracer/podtracer/tracer"
)

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
			}
		}
	}
}
