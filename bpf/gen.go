package bpf

// The kernel programs are compiled by clang through bpf2go; its output is
// committed so that `go build` needs no clang.
//go:generate go tool bpf2go -tags linux -target amd64 -type event -type route_key -type hist_key -type hist_val capture capture.c -- -I./headers -O2 -g -Wall -Werror
