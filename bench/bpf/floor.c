// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The floor of a per-call design: what any program that follows a pod's
// socket calls does on each of them, and nothing more. It finds that the
// call is the pod's (a TCP socket, a task of the pod's PID namespace), the
// syscall's buffer, the connection's state, the time, and copies the
// payload's first 64 bytes. It sends nothing anywhere. The bench's floor
// variant runs it in place of the agent: what it costs the server is the
// least that podtracer's kernel side, or any design like it, can cost.
#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_core_read.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct conn_state {
	__u64 last_ns;
	__u64 calls;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct conn_state);
} socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[64]);
} head SEC(".maps");

volatile const __u32 pidns_ino = 0; // the pod's PID namespace

// calls counts the pod's calls the program followed, so that the bench
// can tell a floor that measured something from one that matched nothing.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

// upid_at is numbers[L] of a struct pid, at a constant offset (the
// verifier refuses a variable one). Kernels before 6.5 declare numbers[1]
// and refuse even a constant index past it: there the agent calls a
// helper instead, and the floor does not load (it needs 6.5 or later).
#define upid_at(p, L) \
	((struct upid *)((void *)(p) + bpf_core_field_offset(struct pid, numbers) + (L) * bpf_core_type_size(struct upid)))

// in_pod tells whether task lives in the pod's PID namespace: numbers[]
// at the task's own depth names it (depths 0 to 3 followed, like the
// agent's direct read).
static __always_inline bool in_pod(struct task_struct *task)
{
	struct pid *p = task->thread_pid;
	switch (p->level) {
	case 0:
		return upid_at(p, 0)->ns->ns.inum == pidns_ino;
	case 1:
		return upid_at(p, 1)->ns->ns.inum == pidns_ino;
	case 2:
		return upid_at(p, 2)->ns->ns.inum == pidns_ino;
	case 3:
		return upid_at(p, 3)->ns->ns.inum == pidns_ino;
	}
	return false;
}

static __always_inline void *first_buffer(struct pt_regs *regs)
{
	struct iovec iov = {};
	struct user_msghdr msg;
	switch (regs->orig_ax) {
	case 0:  // read
	case 1:  // write
	case 44: // sendto
	case 45: // recvfrom
		return (void *)regs->si;
	case 19: // readv
	case 20: // writev
		bpf_probe_read_user(&iov, sizeof(iov), (void *)regs->si);
		return iov.iov_base;
	case 46: // sendmsg
	case 47: // recvmsg
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)regs->si))
			return 0;
		bpf_probe_read_user(&iov, sizeof(iov), msg.msg_iov);
		return iov.iov_base;
	}
	return 0;
}

static __always_inline int on_call(struct sock *sk, int ret)
{
	if (ret <= 0 || sk->sk_protocol != 6 /* IPPROTO_TCP */)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	if (!in_pod(task))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	struct conn_state *st = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	st->last_ns = bpf_ktime_get_boot_ns();
	st->calls++;
	__u32 zero = 0;
	char *buf = bpf_map_lookup_elem(&head, &zero);
	void *src = first_buffer(regs);
	if (buf && src)
		bpf_probe_read_user(buf, 64, src);
	__u64 *n = bpf_map_lookup_elem(&calls, &zero);
	if (n)
		(*n)++;
	return 0;
}

SEC("tp_btf/sock_recv_length")
int floor_recv(__u64 *ctx)
{
	return on_call((struct sock *)ctx[0], ctx[1]);
}

SEC("tp_btf/sock_send_length")
int floor_send(__u64 *ctx)
{
	return on_call((struct sock *)ctx[0], ctx[1]);
}
