package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/podtracer/podtracer/bpf"
)

func main() {
	c, err := bpf.Load(bpf.Config{CaptureBytes: 256}, slog.Default())
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	go func() { time.Sleep(8 * time.Second); c.Close() }()
	var ev bpf.Event
	for c.Read(&ev) == nil {
		fmt.Printf("%d %s pid=%d fd=%d dir=%d role=%d len=%d %s->%s tail=%q %q\n", ev.Type, ev.CommString(), ev.PID, ev.FD, ev.Dir, ev.Role, ev.Len, ev.Local, ev.Remote, ev.Tail, ev.Payload)
	}
	s, _ := c.Stats()
	fmt.Printf("%+v\n", s)
}
