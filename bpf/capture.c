//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Kernel half of podtracer's capture: the TCP traffic of the processes that
// share the agent's PID namespace (its pod). Two sets of hooks do the same
// job; the loader picks one (bpf/capture.go):
//
//   - socket tracepoints (Linux 6.3+, tp_btf): sock_recv_length and
//     sock_send_length fire once per socket receive or send, with the
//     socket in hand, and inet_sock_set_state once per TCP state change.
//     The syscall's arguments (buffer, iovec, msghdr) come from the task's
//     saved registers. Nothing fires for the node's other syscalls.
//   - syscall tracepoints (the fallback, Linux 5.8+): raw tracepoints
//     sys_enter and sys_exit, on every syscall of the node, filtered by
//     number first. They need neither kprobes nor tracefs.
//
// Every hit is filtered cheapest first, and the PID namespace check comes
// before anything is copied: nothing from another pod reaches user space,
// and the agent itself is excluded.

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_core_read.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// x86_64 syscall numbers.
#define NR_READ 0
#define NR_WRITE 1
#define NR_CLOSE 3
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDFILE 40
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#define NR_SPLICE 275
#define NR_ACCEPT4 288
// NR_COUNT_ONLY stands for a syscall whose bytes are not in a buffer its
// registers name (sendfile aside): in the socket hooks io_uring, splice,
// sendmmsg and recvmmsg, an io_uring worker's; in the syscall hooks
// splice; in both a receive with MSG_TRUNC. Its bytes are counted, not
// read, so that user space knows where the stream has a hole.
#define NR_COUNT_ONLY 0xffffffff
#define PF_IO_WORKER 0x00000010

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EINPROGRESS 115
#define MSG_OOB 1
#define MSG_PEEK 2
#define MSG_TRUNC 0x20
#define MSG_ERRQUEUE 0x2000
// NOT_STREAM are the receive flags whose bytes are not the stream's next:
// a peek (read again later), the urgent byte, the error queue's packets.
// A receive with MSG_TRUNC takes the stream's next bytes but discards them
// without copying them (the buffer holds whatever it held): they are
// counted, not read.
#define NOT_STREAM (MSG_OOB | MSG_PEEK | MSG_ERRQUEUE)
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define TCP_LAST_ACK 9

// MAX_CAPTURE bounds the payload prefix copied per syscall; capture_bytes
// (set by the loader) picks the actual prefix up to it. A power of two, so
// offsets can be masked for the verifier.
#define MAX_CAPTURE 4096
#define TAIL_BYTES 16
// Vectors of one readv/writev/sendmsg/recvmsg: the payload prefix is
// copied from the first MAX_IOV_COPY, the tail found among MAX_IOV.
#define MAX_IOV 64
#define MAX_IOV_COPY 8

// Settings written by the loader before the program is loaded.
volatile const __u64 pidns_dev = 0;
volatile const __u64 pidns_ino = 0;
volatile const __u32 agent_tgid = 0;
volatile const __u32 capture_bytes = 512;
// Unread bytes in the ring buffer past which an event wakes the reader;
// below it the reader finds events when it polls (see submit).
volatile const __u64 wakeup_bytes = 1 << 20;

enum event_type {
	EVENT_DATA = 1,
	EVENT_CLOSE = 2,
	// An HTTP/1 exchange the kernel measured for a span (the kernel's
	// spans, below): the request's head is the one head_hash names, which
	// the agent has; the payload is the request's traceparent value, if
	// it had one.
	EVENT_HTTP = 3,
	// The request of such an exchange, when its response turned out to be
	// one the kernel does not measure: it stands for the request's bytes
	// (the payload as EVENT_HTTP's), and the response follows as data.
	EVENT_HTTP_REQUEST = 4,
	EVENT_REDIS = 5,         // a server's Redis command and its reply, measured for a span: no payload
	EVENT_REDIS_REQUEST = 6, // stands for the bytes of a command of head_hash's shape
	// A connection's bytes started a TLS handshake: its records are not
	// sent up from now on, and the process's TLS library is where its
	// plaintext comes from (the TLS section, below). No payload.
	EVENT_TLS = 7,
	// A neighbour started a program (execve): no connection, no payload;
	// the name is the new program's.
	EVENT_EXEC = 8,
};

// Event flags: what a server-side Redis connection's kernel drop (below)
// left out before this event, so that user space pairs what follows.
enum event_flags {
	// A command the kernel dropped has no reply yet: the next reply on the
	// connection is its.
	EVENT_GAP = 1,
	// The reply of a command the kernel dropped may go on: its rest comes
	// before this command's reply.
	EVENT_LOST = 2,
	// The payload is a TLS connection's plaintext, read from its TLS
	// library's buffer, not from the socket.
	EVENT_PLAINTEXT = 4,
};

enum direction {
	DIR_INGRESS = 0, // the process received these bytes
	DIR_EGRESS = 1,  // the process sent these bytes
};

enum role {
	ROLE_UNKNOWN = 0,
	ROLE_SERVER = 1, // the fd came from accept
	ROLE_CLIENT = 2, // the fd was connected
};

// event is what user space reads; payload follows the header. Keep in sync
// with bpf/event.go.
struct event {
	__u64 ts_enter; // CLOCK_BOOTTIME ns at syscall entry
	__u64 ts_exit;  // and at exit
	__u64 sock;     // struct sock address: the connection's identity
	// The trace ID's low 64 bits, drawn by the kernel for a request (see
	// picked below); 0 when it drew none.
	__u64 trace_low;
	__u32 tgid;     // in the pod's PID namespace
	__u32 tid;
	__u32 fd;
	__u32 len;      // bytes the syscall transferred
	__u16 captured; // payload bytes that follow the header
	__u8 type;
	__u8 dir;
	__u8 role;
	__u8 tail_len; // valid bytes in tail
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
	__u8 tail[TAIL_BYTES]; // last bytes transferred when len > captured
	char comm[16];
	__u8 flags; // EVENT_GAP, EVENT_LOST: what the kernel left out before it
	__u8 pad;
	__u16 status; // EVENT_HTTP: the response's status code
	__u32 body;   // EVENT_HTTP: the response's body bytes
	// Bytes of pieces after the captured prefix: HTTP/2 frames past it
	// (see h2_follow), each [offset u32][length u16][bytes].
	__u16 extra;
	__u16 pad2;
	// The hash of the request head in this event (EVENT_DATA), or of the
	// one an EVENT_HTTP or EVENT_HTTP_REQUEST stands for; 0 when none.
	__u64 head_hash;
	// Sized so the verifier can prove that a masked copy (offset < MAX_CAPTURE,
	// length < 2 * MAX_CAPTURE) stays inside; at most MAX_CAPTURE
	// bytes of it are ever sent.
	__u8 payload[3 * MAX_CAPTURE];
};

// bounded hides what the compiler knows of v, then masks it, so the mask
// survives optimisation and the verifier sees the bound on the register used.
#define bounded(v, mask) ({ __u32 __b = (v); asm volatile("" : "+r"(__b)); __b & (mask); })

#define EVENT_HEADER_SIZE (sizeof(struct event) - 3 * MAX_CAPTURE)

// Per-thread syscall arguments, from sys_enter to sys_exit. A thread's
// entry is made on its first followed syscall and then reused: a lookup
// per syscall, no update or delete (those cost several times more). The
// LRU evicts the entries of threads that are gone. Task storage would do
// the same, but only from Linux 5.13 on, and measured no faster.
struct call {
	__u64 ts;
	__u64 task; // the task that entered: its host tid may be another pod's by the exit
	__u64 buf;  // buffer, iovec array or msghdr
	__u32 nr;
	__u32 fd;
	__u32 iovcnt;
	__u32 ns_tgid; // the caller in the pod's PID namespace
	__u32 ns_tid;
	__u32 active; // set by sys_enter, cleared by sys_exit
};

struct conn_key {
	__u32 tgid; // host tgid: unique on the node
	__u32 fd;
};

// conn caches what an fd is, so sockets are resolved once. file validates
// the entry: an fd reused for another file no longer matches.
struct conn {
	__u64 file;
	__u64 sock; // 0: not a TCP socket
	__u8 role;
	__u8 announced; // an event of it went up: its process is announced
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
};

enum stat_index {
	STAT_EVENTS = 0,   // events written to the ring buffer
	STAT_LOST = 1,     // events lost: ring buffer full
	STAT_CALLS_FULL = 2, // syscalls not followed: no in-flight entry for the thread
	STAT_FAST = 3,     // HTTP requests measured in the kernel (fast path)
	STAT_FAST_LOST = 4, // and not recorded: the histogram map was full
	STAT_REDIS_DROP = 5, // server-side Redis commands dropped, not picked for a span
	STAT_SPAN = 6,     // HTTP requests picked for a span whose head the kernel stood for
	STAT_REDIS_SPAN = 7, // Redis commands picked for a span whose shape the kernel stood for
	STAT_H2_QUIET = 8,   // HTTP/2 segments of window updates and pings alone, not sent (h2_follow)
	STAT_TLS_RECORDS = 9, // sends and receives of TLS records, not sent up (their plaintext is)
	STAT_TLS_LOST = 10, // TLS plaintext lost: its connection was not known, or its read began before the uprobes
	STAT_MAX = 11,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); // the loader sets PODTRACER_RING_BUFFER_BYTES
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // pid_tgid
	__type(value, struct call);
} calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

// scratch holds the event being built, per CPU: slot 0 for the socket
// and syscall programs, which run in the traced task's context; slot 1 for
// inet_sock_set_state, which also runs in softirq, and so may interrupt
// one of them half-way through its event on the same CPU.
#define SCRATCH_TASK 0 // copy_iov, head_step, redis_arg, h2_step and h2_piece look it up as key 0
#define SCRATCH_STATE 1
#define SCRATCH_DESTROY 2 // tcp_destroy_sock's: it runs in a task or in softirq

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct event);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &index);
	if (v)
		*v += 1;
}

// in_pod tells whether the current task is a neighbour: in the agent's PID
// namespace and not the agent. It yields the pod-namespace tgid and tid.
static __always_inline bool in_pod(struct bpf_pidns_info *ns)
{
	if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, ns, sizeof(*ns)))
		return false;
	return ns->tgid != agent_tgid;
}

// in_pod_btf is in_pod for BTF programs (tp_btf), where the task's pid
// structures are read with plain loads instead of the helper's calls
// (measured: 50 ns per hit instead of 125). The PID namespace a task lives
// in is numbers[level] of its struct pid, as for the helper, and its pid
// there is that entry's nr. Namespace inode numbers are unique (one nsfs),
// so the inode alone names the pod's namespace. The verifier wants
// constant offsets into struct pid, so the usual depths are unrolled;
// deeper ones (a pod in a pod in a pod) take the helper.
#define upid_at(p, L) \
	((struct upid *)((void *)(p) + bpf_core_field_offset(struct pid, numbers) + (L) * bpf_core_type_size(struct upid)))
#define POD_LEVEL(L)                                                               \
	case L:                                                                    \
		if (upid_at(p, L)->ns->ns.inum != pidns_ino)                       \
			return false;                                              \
		ns->pid = upid_at(p, L)->nr;                                       \
		ns->tgid = upid_at(task->group_leader->thread_pid, L)->nr;         \
		break;

static __always_inline bool in_pod_btf(struct task_struct *task, struct bpf_pidns_info *ns)
{
	struct pid *p = task->thread_pid;
	__u32 level = p->level;
	// Kernels before 6.5 (and 6.1 before the backport) declare
	// numbers[1], not numbers[]: the verifier refuses a load past its one
	// element, so there only depth 0 is read directly. The field's size is
	// a constant at load time, and the verifier skips the dead branch.
	if (level > 0 && bpf_core_field_size(struct pid, numbers) != 0)
		return in_pod(ns);
	switch (level) {
	POD_LEVEL(0)
	POD_LEVEL(1)
	POD_LEVEL(2)
	POD_LEVEL(3)
	default:
		return in_pod(ns);
	}
	return ns->tgid != agent_tgid;
}

static __always_inline bool followed(__u32 nr)
{
	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_READV:
	case NR_WRITEV:
	case NR_SENDFILE:
	case NR_SPLICE:
	case NR_CONNECT:
	case NR_ACCEPT:
	case NR_ACCEPT4:
	case NR_SENDTO:
	case NR_RECVFROM:
	case NR_SENDMSG:
	case NR_RECVMSG:
		return true;
	}
	return false;
}

// fd_file returns the struct file behind fd in the current task.
static __always_inline struct file *fd_file(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

// resolve fills c from the file: whether it is a TCP socket, and its ends.
static __always_inline void resolve(struct conn *c, struct file *f)
{
	c->file = (__u64)f;
	c->sock = 0;
	if (!f)
		return;
	unsigned short mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return;
	struct socket *so = BPF_CORE_READ(f, private_data);
	struct sock *sk = BPF_CORE_READ(so, sk);
	if (!sk)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP || BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
		return;
	c->sock = (__u64)sk;
	c->family = family;
	c->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	c->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		__be32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__be32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(c->laddr, &l, 4);
		__builtin_memcpy(c->raddr, &r, 4);
	} else {
		BPF_CORE_READ_INTO(&c->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&c->raddr, sk, __sk_common.skc_v6_daddr);
	}
}

// lookup_conn returns the cached connection of fd, resolving it when the fd
// is new or now names another file. It returns 0 for anything that is not a
// TCP socket.
static __always_inline struct conn *lookup_conn(__u32 tgid, __u32 fd)
{
	struct conn_key key = {.tgid = tgid, .fd = fd};
	struct file *f = fd_file(fd);
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (c && c->file == (__u64)f) {
		if (c->sock)
			return c;
		return 0;
	}
	if (c && c->file == 0 && c->role != ROLE_UNKNOWN) {
		// Marked by accept or connect, resolved on first use: keep the role.
		resolve(c, f);
		return c->sock ? c : 0;
	}
	struct conn fresh = {};
	resolve(&fresh, f);
	bpf_map_update_elem(&conns, &key, &fresh, BPF_ANY);
	if (!fresh.sock)
		return 0;
	return bpf_map_lookup_elem(&conns, &key);
}

// iov_scratch holds a syscall's iovec array while copy_iov walks it (512
// bytes: the whole BPF stack).
struct iov_entry {
	__u64 base; // struct iovec, with plain numbers for the generated Go types
	__u64 len;
};

struct iov_array {
	struct iov_entry v[MAX_IOV];
	__u64 addr; // the iovec array the last copy_iov read, in user memory
	__u32 cnt;  // and its vectors read into v
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct iov_array);
} iov_scratch SEC(".maps");

// copy_iov copies up to capture_bytes from an iovec array into e->payload and
// the last bytes transferred into e->tail. The array itself (up to MAX_IOV
// entries) is read in one go: each probe read costs about 100 ns, and
// writev of a response's head and body (nginx, Node.js) has two or more.
// The tail may span vectors: Node.js writes a whole chunked response in
// one writev of 17 vectors, the last one "0\r\n\r\n", and without those
// bytes the end of the body cannot be found.
//
// It is a global function: the verifier checks its loops once, on their
// own, instead of inline for each of the three syscalls that use it and
// for each state they are reached in; they were most of the programs'
// budget (on 6.18, 684k of the socket receive program's 1M instructions
// with no fast path, 224k now). Only vectored calls pay for the call (a
// return costs more than usual on CPUs with the SRSO mitigation), not
// read and write. Its arguments are 64-bit: the verifier takes a global
// function's for any 64-bit value. It returns the bytes captured, into
// the scratch event.
__noinline int copy_iov(__u64 iov_addr, __u64 iovcnt64, __u64 total64)
{
	__u32 zero = 0;
	struct iov_array *vecs = bpf_map_lookup_elem(&iov_scratch, &zero);
	struct event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!vecs || !e)
		return 0;
	struct iovec *iov = (struct iovec *)iov_addr;
	__u32 iovcnt = iovcnt64, total = total64;
	// Clamped before it is masked for the verifier: a mask alone would
	// turn 64 vectors into none.
	__u32 cnt = iovcnt < MAX_IOV ? iovcnt : MAX_IOV;
	cnt = bounded(cnt, 2 * MAX_IOV - 1);
	if (cnt > MAX_IOV)
		cnt = MAX_IOV;
	vecs->cnt = 0;
	vecs->addr = iov_addr;
	if (cnt == 0 || bpf_probe_read_user(vecs->v, cnt * sizeof(struct iov_entry), iov))
		return 0;
	vecs->cnt = cnt;

	// The payload prefix, from the first vectors.
	__u32 off = 0;
	__u32 seen = 0; // bytes of the transfer before this iovec
	__u32 limit = capture_bytes;
	if (limit > MAX_CAPTURE)
		limit = MAX_CAPTURE;
	if (total < limit)
		limit = total;
	for (int i = 0; i < MAX_IOV_COPY; i++) {
		if (i >= cnt || off >= limit)
			break;
		__u64 n = vecs->v[i].len;
		if (n > total - seen)
			n = total - seen;
		__u32 want = limit - off;
		if (want > n)
			want = n;
		if (want > 0)
			bpf_probe_read_user(&e->payload[bounded(off, MAX_CAPTURE - 1)], bounded(want, 2 * MAX_CAPTURE - 1),
					    (void *)vecs->v[i].base);
		off += want;
		seen += n;
	}
	if (total <= off)
		return off;

	// The tail: find the vector where the transfer ends (a short write
	// ends inside one), then take its last bytes, and the ones before
	// from the previous vector when it holds fewer than TAIL_BYTES.
	__u64 before = 0; // bytes of the transfer before vector i
	__u32 end = MAX_IOV; // the vector the transfer ends in
	__u64 end_n = 0;     // and its bytes in the transfer
	for (int i = 0; i < MAX_IOV; i++) {
		if (i >= cnt)
			break;
		__u64 n = vecs->v[i].len;
		if (before + n >= total) {
			end = i;
			end_n = total - before;
			break;
		}
		before += n;
	}
	if (end >= MAX_IOV)
		return off; // more vectors than followed: no tail
	end = bounded(end, MAX_IOV - 1);
	__u32 k1 = end_n < TAIL_BYTES ? end_n : TAIL_BYTES;
	__u32 k0 = 0;
	__u64 prev_n = 0;
	void *prev = 0;
	if (k1 < TAIL_BYTES && end > 0) {
		__u32 p = bounded(end - 1, MAX_IOV - 1);
		prev = (void *)vecs->v[p].base;
		prev_n = vecs->v[p].len;
		k0 = TAIL_BYTES - k1;
		if (k0 > prev_n)
			k0 = prev_n;
	}
	// Bounds for the verifier; k0 + k1 <= TAIL_BYTES by construction.
	k0 = bounded(k0, TAIL_BYTES - 1);
	k1 = bounded(k1, 2 * TAIL_BYTES - 1);
	if (k1 > TAIL_BYTES)
		k1 = TAIL_BYTES;
	if (k0 > 0)
		bpf_probe_read_user(e->tail, k0, prev + prev_n - k0);
	if (k1 > 0)
		bpf_probe_read_user(&e->tail[k0], k1, (void *)vecs->v[end].base + end_n - k1);
	e->tail_len = k0 + k1;
	return off;
}

static __always_inline __u32 copy_buf(struct event *e, void *buf, __u32 total)
{
	__u32 limit = capture_bytes;
	if (limit > MAX_CAPTURE)
		limit = MAX_CAPTURE;
	if (total < limit)
		limit = total;
	// A read that fails leaves zeros: no bytes, rather than zeros
	// reported as the stream's.
	if (limit > 0 && bpf_probe_read_user(e->payload, bounded(limit, 2 * MAX_CAPTURE - 1), buf))
		return 0;
	if (total > limit) {
		__u32 t = TAIL_BYTES;
		if (bpf_probe_read_user(e->tail, t, buf + total - t) == 0)
			e->tail_len = t;
	}
	return limit;
}

// scratch_event takes the per-CPU scratch event of slot (SCRATCH_*) and
// fills what every event has but the process's name: type, process and
// thread.
static __always_inline struct event *scratch_event(__u32 slot, __u32 ns_tgid, __u32 ns_tid, __u8 type)
{
	struct event *e = bpf_map_lookup_elem(&scratch, &slot);
	if (!e)
		return 0;
	e->type = type;
	e->tgid = ns_tgid;
	e->tid = ns_tid;
	e->captured = 0;
	e->tail_len = 0;
	e->len = 0;
	e->fd = 0;
	e->trace_low = 0;
	e->flags = 0;
	e->status = 0;
	e->body = 0;
	e->head_hash = 0;
	e->extra = 0;
	return e;
}

// event_base is scratch_event with the process's name; the caller fills
// the connection.
static __always_inline struct event *event_base(__u32 ns_tgid, __u32 ns_tid, __u8 type)
{
	struct event *e = scratch_event(SCRATCH_TASK, ns_tgid, ns_tid, type);
	if (!e)
		return 0;
	// The process's name, not the thread's ("kcat", not "rdk:broker-1"):
	// events reach user space in batches, and a short-lived process may be
	// gone from /proc by then, leaving this as its only name.
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	BPF_CORE_READ_INTO(&e->comm, task, group_leader, comm);
	return e;
}

static __always_inline struct event *new_event(struct conn *c, __u32 ns_tgid, __u32 ns_tid, __u8 type)
{
	struct event *e = event_base(ns_tgid, ns_tid, type);
	if (!e)
		return 0;
	e->sock = c->sock;
	e->role = c->role;
	e->family = c->family;
	e->lport = c->lport;
	e->rport = c->rport;
	__builtin_memcpy(e->laddr, c->laddr, 16);
	__builtin_memcpy(e->raddr, c->raddr, 16);
	return e;
}

// submit sends e to user space. It does not wake the reader: waking it
// from inside the traced process's syscall costs an interrupt (a VM exit
// on virtual machines) per event, more than all the rest of the program.
// The reader polls every few milliseconds instead, and only a ring buffer
// filling up faster than that wakes it.
static __always_inline void submit_waking(struct event *e, bool wake)
{
	__u32 captured = bounded(e->captured + e->extra, 2 * MAX_CAPTURE - 1);
	__u64 flags = BPF_RB_NO_WAKEUP;
	if (wake || bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	if (bpf_ringbuf_output(&events, e, EVENT_HEADER_SIZE + captured, flags))
		count(STAT_LOST);
	else
		count(STAT_EVENTS);
}

static __always_inline void submit(struct event *e)
{
	submit_waking(e, false);
}

// announced holds the processes (tgids in the pod's namespace) whose
// sockets have sent events. A process not in it yet wakes the agent with
// its first event, rather than waiting for the next poll (up to
// PollInterval, 200 ms, for a quiet pod): the agent then reads its /proc
// entry (executable, command line, container) before a short-lived one,
// a curl or a probe's script, has exited. Once per process; a new socket
// looks it up once.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} announced SEC(".maps");

// first_of_process tells whether tgid has not been announced, and
// announces it.
static __always_inline bool first_of_process(__u32 tgid)
{
	if (bpf_map_lookup_elem(&announced, &tgid))
		return false;
	__u8 one = 1;
	bpf_map_update_elem(&announced, &tgid, &one, BPF_ANY);
	return true;
}

static __always_inline void on_close(struct bpf_pidns_info *ns, __u32 tgid, __u32 fd)
{
	struct conn_key key = {.tgid = tgid, .fd = fd};
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c)
		return;
	if (c->sock) {
		struct event *e = new_event(c, ns->tgid, ns->pid, EVENT_CLOSE);
		if (e) {
			e->fd = fd;
			e->ts_enter = e->ts_exit = bpf_ktime_get_boot_ns();
			submit(e);
		}
	}
	bpf_map_delete_elem(&conns, &key);
}

// copy_payload fills e's direction and payload for a transfer of len bytes
// by syscall nr, whose arguments were buf (a buffer, an iovec array or a
// msghdr) and iovcnt. It returns false for a syscall that is not followed.
static __always_inline bool copy_payload(struct event *e, __u32 nr, __u64 buf, __u32 iovcnt, __u32 len)
{
	switch (nr) {
	case NR_READ:
	case NR_RECVFROM:
		e->dir = DIR_INGRESS;
		e->captured = copy_buf(e, (void *)buf, len);
		break;
	case NR_WRITE:
	case NR_SENDTO:
		e->dir = DIR_EGRESS;
		e->captured = copy_buf(e, (void *)buf, len);
		break;
	case NR_READV:
		e->dir = DIR_INGRESS;
		e->captured = copy_iov(buf, iovcnt, len);
		break;
	case NR_WRITEV:
		e->dir = DIR_EGRESS;
		e->captured = copy_iov(buf, iovcnt, len);
		break;
	case NR_RECVMSG:
	case NR_SENDMSG: {
		e->dir = nr == NR_RECVMSG ? DIR_INGRESS : DIR_EGRESS;
		struct user_msghdr msg;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)buf) == 0)
			e->captured = copy_iov((__u64)msg.msg_iov, msg.msg_iovlen, len);
		break;
	}
	case NR_SENDFILE:
		// The bytes come from a file, not user memory: count them only.
		e->dir = DIR_EGRESS;
		break;
	case NR_COUNT_ONLY:
		break; // the caller set the direction
	default:
		return false;
	}
	return true;
}

SEC("raw_tracepoint/sys_enter")
int sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 nr = ctx->args[1];
	if (nr != NR_CLOSE && !followed(nr))
		return 0;
	struct bpf_pidns_info ns;
	if (!in_pod(&ns))
		return 0;

	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	__u32 fd = BPF_CORE_READ(regs, di);
	if (nr == NR_CLOSE) {
		on_close(&ns, bpf_get_current_pid_tgid() >> 32, fd);
		return 0;
	}
	// recvfrom's flags are its fourth argument (r10 for the syscall), and
	// recvmsg's its third: a peek, say, is not the stream's next bytes.
	__u64 rflags = nr == NR_RECVFROM ? BPF_CORE_READ(regs, r10) : nr == NR_RECVMSG ? BPF_CORE_READ(regs, dx) : 0;
	if (rflags & NOT_STREAM)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct call *c = bpf_map_lookup_elem(&calls, &id);
	if (!c) {
		struct call zero = {};
		bpf_map_update_elem(&calls, &id, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&calls, &id);
	}
	if (!c) {
		count(STAT_CALLS_FULL);
		return 0;
	}
	c->ts = bpf_ktime_get_boot_ns();
	c->task = bpf_get_current_task();
	c->nr = (rflags & MSG_TRUNC) ? NR_COUNT_ONLY : nr;
	c->fd = fd;
	c->buf = BPF_CORE_READ(regs, si);
	c->iovcnt = BPF_CORE_READ(regs, dx); // splice's fd_out
	c->ns_tgid = ns.tgid;
	c->ns_tid = ns.pid;
	c->active = 1;
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	// This runs after every syscall on the node: rule out the syscalls not
	// followed before touching any map.
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	if (!followed(BPF_CORE_READ(regs, orig_ax)))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct call *call = bpf_map_lookup_elem(&calls, &id);
	if (!call || !call->active)
		return 0;
	struct call c = *call;
	call->active = 0;
	// An entry the pod's thread left (it exited in its syscall) whose
	// host tid another task has now: not that task's call.
	if (c.task != bpf_get_current_task())
		return 0;
	long ret = ctx->args[1];
	__u32 tgid = id >> 32;

	if (c.nr == NR_ACCEPT || c.nr == NR_ACCEPT4 || c.nr == NR_CONNECT) {
		__u32 fd = c.nr == NR_CONNECT ? c.fd : (__u32)ret;
		if (ret < 0 && !(c.nr == NR_CONNECT && ret == -EINPROGRESS))
			return 0;
		struct conn_key key = {.tgid = tgid, .fd = fd};
		struct conn mark = {.role = c.nr == NR_CONNECT ? ROLE_CLIENT : ROLE_SERVER};
		bpf_map_update_elem(&conns, &key, &mark, BPF_ANY);
		return 0;
	}
	if (ret <= 0)
		return 0;

	__u32 fd = c.fd;
	__u8 dir = DIR_INGRESS;
	struct conn *conn = 0;
	if (c.nr == NR_SPLICE) {
		// splice(fd_in, off_in, fd_out, ...) moves bytes between a pipe
		// and, here, a socket, in the kernel: they are counted, not read
		// (a Go proxy's io.Copy between two connections splices both
		// ways). The socket hooks see only a splice into a socket.
		conn = lookup_conn(tgid, c.iovcnt);
		if (conn) {
			fd = c.iovcnt;
			dir = DIR_EGRESS;
		}
	}
	if (!conn)
		conn = lookup_conn(tgid, fd);
	if (!conn)
		return 0;
	struct event *e = new_event(conn, c.ns_tgid, c.ns_tid, EVENT_DATA);
	if (!e)
		return 0;
	e->ts_enter = c.ts;
	e->ts_exit = bpf_ktime_get_boot_ns();
	e->fd = fd;
	e->len = ret;

	e->dir = dir;
	if (!copy_payload(e, c.nr == NR_SPLICE ? NR_COUNT_ONLY : c.nr, c.buf, c.iovcnt, ret))
		return 0;
	bool wake = false;
	if (!conn->announced) {
		conn->announced = 1;
		wake = first_of_process(c.ns_tgid);
	}
	submit_waking(e, wake);
	return 0;
}

// ---------------------------------------------------------------------------
// Socket tracepoints (Linux 6.3+). One hit per socket receive or send, not
// two per syscall of the node: a process's epoll_wait, futex or file read
// costs nothing, and no in-flight state is kept between entry and exit.

// hist_key is one series of the kernel's HTTP histograms.
struct hist_key {
	__u32 tgid;   // in the pod's PID namespace
	__u32 route;  // the agent's id of the path's route
	__u64 method; // the method's name, its bytes in a word (fast_method)
	__u16 status;
	__u8 minor; // of HTTP/1.x: '0' or '1'
	__u8 pad[5];
};

// TRACEPARENT_VALUE is the length of a W3C traceparent's value, version 00
// ("00-" 32 hex "-" 16 hex "-" 2 hex).
#define TRACEPARENT_VALUE 55

// h2_dir is where one direction of an HTTP/2 connection is in its frames,
// between two segments (h2_follow).
struct h2_dir {
	__u32 left; // payload bytes of the current frame still to come
	__u32 want; // of which the first ones wanted, to be copied
	__u8 nhdr;  // bytes of a frame header the last segment ended in
	__u8 lost;  // the frames could not be followed: wait for a plausible one
	__u8 hdr[9];
	__u8 pad;
};

// sock_state is what the kernel keeps with each of the pod's sockets, in
// socket-local storage: freed with the socket, so it needs no bound of its
// own and no eviction.
struct sock_state {
	__u32 tgid; // in the pod's PID namespace: who gets the close event
	__u8 role;
	__u8 closed; // the close event was sent
	__u8 fast;   // FAST_* flags: the HTTP/1 fast path on this connection
	__u8 bucket; // the histogram bucket the skipped exchange is counted in
	__u64 req_ns; // when the skipped request arrived
	__u64 dur_ns; // the duration it is counted with, so far
	struct hist_key key; // and its series
	__u8 held;      // a request's first byte, read alone (holding)
	__u8 redis;     // REDIS_* flags: the Redis drop on this connection
	// holding says that held is held (hold_byte): a field of its own, not
	// one of fast's flags, for the receive that holds a byte and the
	// response's send can run at once on two CPUs, and each writes the
	// field it owns whole.
	__u8 holding;
	__u64 held_ns;  // and when held came
	__u64 trace_low; // FAST_SPAN: the owned request's trace ID draw
	__u64 head;      // and its head's hash
	__u8 has_parent; // and it had a traceparent, whose value is parent
	__u8 parent[TRACEPARENT_VALUE + 1];
	__u8 h2; // H2_ON: the connection speaks HTTP/2 (h2_follow)
	// The connection ended (TCP_CLOSE) while bytes were still to be read:
	// its close event waits until they are (late_close).
	__u8 close_late;
	__u8 announced; // an event of it went up: its process is announced
	// H2_ON: when (in ticks of 2^H2_TICK_SHIFT ns) a segment of the
	// connection last went up, so that one of window updates and pings
	// alone goes up at least every H2_LIVE ticks (h2_follow).
	__u16 h2_sent;
	struct h2_dir h2d[2]; // and where each direction is in its frames
	// The connection speaks TLS (tls_hello): its records are not sent
	// up, its plaintext comes from the uprobes on its TLS library.
	__u8 tls;
	// Data events of the connection so far, up to TLS_EARLY (tls_record).
	__u8 early;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
} socks SEC(".maps");

// ---------------------------------------------------------------------------
// HTTP/1 requests measured in the kernel: the fast path (socket hooks only).
//
// When spans are sampled (a trace-ID ratio below 1, or none at all), most
// requests only feed the RED metrics, and sending their bytes to user space
// to be parsed there is most of what they cost. For the commonest of them,
// an HTTP/1 request of a method and path the agent has already seen
// answered, whose head and body (by its Content-Length) come in one read,
// with no traceparent and no upgrade, the kernel records the
// duration in a histogram itself and sends nothing: neither the request's
// bytes nor the response's. The agent reads the histograms when it exports
// metrics (bpf/fast.go).
//
// The kernel draws the trace ID's low 64 bits and judges them the way the
// trace-ID ratio sampler does; a request drawn for a span goes to user
// space whole, with those bits in its event, so the agent's sampler keeps
// it and the trace ID is the one judged.
//
// A whole exchange, request and response, is either skipped or sent, never
// a part: the byte stream the agent sees stays a valid HTTP/1 stream. A
// request that arrives before the response to a skipped one has started
// (pipelining, read-ahead) goes to user space and ends the fast path on
// that connection; its response is the next one that starts.
//
// The kernel's spans. A request picked for a span need not go up whole
// either, when the agent already has its head: one byte for byte the same
// as a head it parsed before (the same method, target, Host, User-Agent
// and every other header; a keep-alive client repeats them). The kernel
// hashes every head it reads through; the agent registers a head's hash
// in http_heads once it has parsed that head twice. For a request whose
// head is registered the kernel sends nothing on the read, and when the
// response goes out whole in one send (status line, head and a body of
// its Content-Length) one EVENT_HTTP record with the times, the status,
// the body's size and the trace ID draw, if any: the agent makes the span from
// the head it has, with no bytes to copy or parse. Any other response (a
// chunked or larger one, a 1xx, one in several sends), a request
// pipelined behind it, or a close before it, sends EVENT_HTTP_REQUEST
// first, which stands for the request's bytes, and the rest goes as data.
//
// A request with a traceparent (an instrumented caller's: each has its
// own) is the kernel's spans' too, never the histograms': the
// traceparent's line is left out of its head's hash, and the value goes
// with the record or the stand-in as their payload. Its parent decides
// whether it is sampled, which the agent's sampler judges.

volatile const __u8 fast_http = 0;      // the fast path is on
volatile const __u8 fast_spans = 0;     // and the kernel's spans
volatile const __u64 sample_bound = 0;  // ratio * 2^63: a drawn ID below it is sampled
#define HIST_BUCKETS 16
// Upper bounds of the buckets but the last, ascending, in ns; unused ones
// are ~0. The agent's histogram has the same (exporter/histogram.go).
volatile const __u64 hist_bounds_ns[HIST_BUCKETS - 1] = {};

#define FAST_OWN 1     // the kernel owns the connection's current exchange
#define FAST_RESP 2    // and its response has started
#define FAST_HANDOFF 4 // a request went to user space meanwhile: the next response is its
#define FAST_OFF 8     // no fast path on this connection any more
#define FAST_PENDING 16 // a request went to user space, and no response has started since
// A request's first byte can come alone (Go's server reads one byte in
// the background while a handler runs, and gets the next request's first
// byte when it comes before that read is cancelled): it is held, not
// sent, until the rest shows whether the exchange is the kernel's
// (sock_state.holding, hold_byte).
#define FAST_SPAN 64 // the owned exchange is a span's, for an EVENT_HTTP record

// What fast_skip tells its caller to do with the event.
enum fast_verdict {
	FAST_SEND = 0,      // send it
	FAST_SKIP = 1,      // the kernel's: send nothing
	FAST_SEND_HELD = 2, // send the held byte first, then it
	FAST_SEND_SPAN = 3, // send the owned exchange's EVENT_HTTP record instead
	FAST_SEND_REQUEST = 4, // send the owned request's EVENT_HTTP_REQUEST first, then it
	FAST_SEND_REQUEST_HELD = 5, // send the owned request's EVENT_HTTP_REQUEST, the held byte, then it
};


// FAST_MAX_HEAD bounds the request heads the kernel reads through (the
// agent's capture_bytes may be less: then only what it copies).
#define FAST_MAX_HEAD 1024
#define ROUTE_PATH 56

// route_key names a path of a process; the agent writes the paths it has
// seen answered, with the id of their route. The path is hashed
// (path_hash; bpf/fast.go does the same), so that the key is small: a
// lookup hashes and compares the whole key.
struct route_key {
	__u32 tgid; // in the pod's PID namespace
	__u8 words; // 8-byte words the path's hash covers
	__u8 pad[3];
	__u64 method; // the method's name, its bytes in a word (fast_method)
	__u64 hash;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH); // paths not asked for go first
	__uint(max_entries, 4096);
	__type(key, struct route_key);
	__type(value, __u32); // route id, the agent's
} http_routes SEC(".maps");

struct hist_val {
	__u64 count;
	__u64 sum_ns;
	__u64 min_ns;
	__u64 max_ns;
	__u64 buckets[HIST_BUCKETS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct hist_key);
	__type(value, struct hist_val);
} http_hist SEC(".maps");

// http_heads holds the hashes of the request heads the agent has (the
// kernel's spans); the agent writes and deletes them.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u8);
} http_heads SEC(".maps");

// hist_room is how many more series http_hist takes: written by the agent
// each time it reads the histograms (bpf/fast.go), as its capacity less
// the series it found and a margin for the series that may come before
// the next read. At 0 the fast path takes no request: a series the map
// could not hold would lose its requests, which user space still counts.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} hist_room SEC(".maps");

#define W8(a, b, c, d, e, f, g, h)                                                                                   \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 | (__u64)(e) << 32 | (__u64)(f) << 40 | \
	 (__u64)(g) << 48 | (__u64)(h) << 56)
#define LOWER8 0x2020202020202020ULL

// bytes_equal marks the bytes of w equal to c (a byte repeated 8 times)
// with their bit 7, without a loop. The lowest mark is exact; higher ones
// can be false (the subtraction's borrow), so callers use the lowest only.
static __always_inline __u64 bytes_equal(__u64 w, __u64 c)
{
	__u64 x = w ^ c;
	return (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
}

// head_scan walks a request head a line at a time, for bpf_loop.
struct head_scan {
	__u32 len;      // bytes in the payload
	__u32 pos;      // where the search for the next '\n' goes on
	__u32 first_nl; // the request line's '\n'; 0 until found
	__u32 body;     // where the body starts, after the blank line; 0 until found
	__u32 length;   // where the Content-Length value starts; 0 when none
	__u8 bad;       // not for the fast path
	__u8 end;       // the blank line was found
	__u64 hash;     // of the lines scanned so far (head_hash)
	__u8 to_length; // stop at the Content-Length header (a response)
	__u8 skip;      // the line being scanned is the traceparent's: not hashed
	__u32 parent;   // where the traceparent's value starts; 0 when none
};

// TRACEPARENT_MARK stands in the head's hash for its traceparent line.
#define TRACEPARENT_MARK 0x7472616365706172ULL

#define HASH_MUL 0x9e3779b97f4a7c15ULL

#define ROUTE_WORDS (ROUTE_PATH / 8)

// path_hash hashes the path that starts at e->payload[start] and ends
// before the first ' ' or '?', as words of 8 bytes, the last one with its
// bytes from the end on zeroed (a path that fills its last word gets a
// zero word after it). It returns false for a path longer than
// ROUTE_PATH - 1 bytes, and for one a space ends before version_space
// (the space before "HTTP/1.x"). Per word, a byte equal to ' ' or '?' is found
// without a loop: the lowest byte of w ^ c that is zero.
static __always_inline bool path_hash(struct event *e, __u32 start, __u32 version_space, struct route_key *rk)
{
	__u64 h = 0xcbf29ce484222325ULL;
#pragma unroll
	for (int i = 0; i < ROUTE_WORDS; i++) {
		__u64 w = *(__u64 *)&e->payload[bounded(start + 8 * i, MAX_CAPTURE - 1)];
		__u64 m = bytes_equal(w, 0x2020202020202020ULL) | bytes_equal(w, 0x3f3f3f3f3f3f3f3fULL);
		if (m) {
			// Bytes below the first match stay: the lowest set bit of m
			// is bit 7 of that byte.
			__u64 low = m & (~m + 1);
			// A space ends the path only where the version starts (at
			// version_space): user space reads "GET /a b HTTP/1.1" as a
			// path of "/a b", which is not /a's route. The byte's index
			// is in the top byte of 256^k times 0x0001..07.
			__u32 at = start + 8 * i + (((low >> 7) * 0x0001020304050607ULL) >> 56);
			if (at != version_space && e->payload[bounded(at, MAX_CAPTURE - 1)] == ' ')
				return false;
			w &= (low >> 7) - 1;
			h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
			rk->hash = h ^ (h >> 29);
			rk->words = i + 1;
			return true;
		}
		h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
	}
	return false;
}

// decimal reads the number of at most max (up to 4) digits at
// e->payload[*at] that a '\r' ends, and moves *at to that '\r'; -1 when
// there is no digit, or no '\r' after them.
static __always_inline int decimal(struct event *e, __u32 *at, const int max)
{
	__u32 p = *at;
	int n = 0, digits = 0;
#pragma unroll
	for (int k = 0; k < 4; k++) {
		__u8 d = e->payload[bounded(p, MAX_CAPTURE - 1)] - '0';
		if (k >= max || d > 9)
			break;
		n = n * 10 + d;
		p++;
		digits++;
	}
	*at = p;
	if (!digits || e->payload[bounded(p, MAX_CAPTURE - 1)] != '\r')
		return -1;
	return n;
}

// content_length reads the value of the Content-Length header whose
// value's line starts at at (just after "Content-Length:"): up to four
// digits after optional spaces. It returns -1 for a value the kernel does
// not read.
static __always_inline int content_length(struct event *e, __u32 at)
{
#pragma unroll
	for (int k = 0; k < 2; k++)
		if (e->payload[bounded(at, MAX_CAPTURE - 1)] == ' ')
			at++;
	return decimal(e, &at, 4);
}

static __always_inline void head_line(struct event *e, struct head_scan *s, __u32 nl)
{
	if (!s->first_nl)
		s->first_nl = nl; // the request line's end; the first header follows
	__u32 n = nl + 1; // the next line
	if (n >= s->len)
		return;
	if (e->payload[bounded(n, MAX_CAPTURE - 1)] == '\r') {
		// The blank line ends the head; the body of its Content-Length,
		// if any, must end the payload (fast_request checks it, outside
		// the loop, where it costs the verifier less). Its bytes are not
		// in the head's hash: it must be "\r\n", as the agent's parser
		// wants it.
		if (e->payload[bounded(n + 1, MAX_CAPTURE - 1)] != '\n' || n + 1 >= s->len) {
			s->bad = 1;
			return;
		}
		s->body = n + 2;
		s->end = 1;
		return;
	}
	// Headers that take a request off the fast path, by their first eight
	// letters, case folded (a false match only costs the fast path).
	__u64 name = *(__u64 *)&e->payload[bounded(n, MAX_CAPTURE - 1)] | LOWER8;
	if (name == W8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r')) {
		// traceparent: the parent decides sampling, so no histogram
		// takes the request; the kernel's spans do, with the value in
		// their record (the agent's sampler judges it). The line is one
		// header, "traceparent:", an optional space and a value of
		// version 00's length just before the line's "\r\n" (head_step
		// checks the end): the bytes that the agent's parser reads as
		// that value. The line's bytes are left out of the head's hash,
		// which takes TRACEPARENT_MARK for them: every request of an
		// instrumented client has a traceparent of its own.
		// Only the letters are folded: a byte 0x1a would fold to ':'.
		__u32 ent = *(__u32 *)&e->payload[bounded(n + 8, MAX_CAPTURE - 1)] | 0x00202020;
		if (!fast_spans || s->to_length || s->parent || ent != ('e' | 'n' << 8 | 't' << 16 | ':' << 24)) {
			s->bad = 1;
			return;
		}
		__u32 v = n + 12;
		if (e->payload[bounded(v, MAX_CAPTURE - 1)] == ' ')
			v++;
		s->parent = v;
		s->skip = 1;
		return;
	}
	if (name == W8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r') || // transfer-encoding: a body of chunks
	    name == W8('u', 'p', 'g', 'r', 'a', 'd', 'e', ':') || // another protocol follows
	    (name & 0x00ffffffffffffffULL) == W8('e', 'x', 'p', 'e', 'c', 't', ':', 0)) { // 100-continue
		s->bad = 1;
		return;
	}
	if (name == W8('c', 'o', 'n', 't', 'e', 'n', 't', '-') &&
	    (*(__u64 *)&e->payload[bounded(n + 8, MAX_CAPTURE - 1)] | LOWER8) << 8 == W8(0, 'l', 'e', 'n', 'g', 't', 'h', ':' | 0x20)) {
		// Content-Length (not Content-Type): a second one is a request
		// the kernel leaves alone.
		if (s->length)
			s->bad = 1;
		s->length = n + 15;
	}
}

// LINE_WORDS is how many words one step of the head scan looks through
// for the next '\n'.
#define LINE_WORDS 3

// head_step is bpf_loop's step over the head: it finds the next '\n' from
// s->pos and checks the line after it. A step per line rather than per
// word, because a step is a call, which costs more here than the scan of
// a word: a 480-byte browser head costs 450 ns less per request than with
// a step per word. LINE_WORDS is 3 because the verifier's work grows with
// it (at 3 it is a little less than with a step per word, at 8 near its
// limit), and longer lines take more steps.
static long head_step(__u32 i, struct head_scan *s)
{
	__u32 zero = 0;
	struct event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 1;
	__u32 pos = s->pos;
	__u64 m = 0, h = s->hash;
	__u8 skip = s->skip;
#pragma unroll
	for (int j = 0; j < LINE_WORDS; j++) {
		if (pos >= s->len)
			return 1; // the payload ends before its blank line
		__u64 w = *(__u64 *)&e->payload[bounded(pos, MAX_CAPTURE - 1)];
		m = bytes_equal(w, 0x0a0a0a0a0a0a0a0aULL);
		// The hash takes the line's words up to its '\n' (the bytes
		// after it zeroed): a line at a time, from where the scan
		// started, whatever else is in the payload.
		if (m)
			w &= ((m & (~m + 1)) << 1) - 1;
		if (!skip)
			h = (h ^ w) * HASH_MUL;
		if (m)
			break;
		pos += 8;
	}
	s->hash = h;
	if (!m) {
		s->pos = pos;
		return 0;
	}
	// The byte index of the lowest set bit: 256^k times 0x0001..07 has k
	// in its top byte.
	__u32 nl = pos + ((((m & (~m + 1)) >> 7) * 0x0001020304050607ULL) >> 56);
	if (nl >= s->len)
		return 1; // a byte past the payload
	if (skip) {
		// The traceparent's line ends right after its value.
		if (nl != s->parent + TRACEPARENT_VALUE + 1 || e->payload[bounded(nl - 1, MAX_CAPTURE - 1)] != '\r') {
			s->bad = 1;
			return 1;
		}
		s->hash = (h ^ TRACEPARENT_MARK) * HASH_MUL;
		s->skip = 0;
	}
	head_line(e, s, nl);
	s->pos = nl + 1;
	return s->bad || s->end || (s->to_length && s->length);
}

// scans holds the head scan of the program running on each CPU. In a map
// value, not on the stack: the verifier follows the values of stack slots
// (the scan's fields, set to constants before the scan) through the
// scan's bpf_loop steps, and the states it explores multiply with them.
// Its fields read back from a map are just numbers to it: on 6.18
// sock_recv_length takes 185k instructions to check so, 927k with the
// scan on the stack (1M is the most it takes).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct head_scan);
} scans SEC(".maps");

// new_scan is this CPU's head scan, set to start at pos of a payload of
// len bytes with hash.
static __always_inline struct head_scan *new_scan(__u32 len, __u32 pos, __u64 hash, __u8 to_length)
{
	__u32 zero = 0;
	struct head_scan *s = bpf_map_lookup_elem(&scans, &zero);
	if (!s)
		return 0;
	__builtin_memset(s, 0, sizeof(*s));
	s->len = len;
	s->pos = pos;
	s->hash = hash;
	s->to_length = to_length;
	return s;
}

// scan_head runs the head scan over *s (new_scan). bpf_loop wants its
// context on the stack: hence the copy, whose fields the verifier then
// knows no more of than of the map value's.
static __always_inline void scan_head(struct head_scan *s)
{
	struct head_scan l = *s;
	// At most a step per byte; it stops at the blank line. The mask is not
	// for the verifier: the kernel's inlined bpf_loop compares all 64 bits
	// of the register, and clang, loading len and pos as one word for the
	// copy, would leave pos in its upper half.
	bpf_loop(l.len & (2 * MAX_CAPTURE - 1), head_step, &l, 0);
	*s = l;
}

// fast_method is the method of the request e starts: the bytes of its
// name (3 to 7 of them, before the first space) as a word, 0 when there is
// none; it sets start to where its target begins in e. Which methods the
// kernel takes is the agent's choice: it registers a path with its method
// (route_key), and the name is computed, not matched against a list, so
// that the verifier follows one path for every method. held is the
// request's first byte when it came alone and is held (holding), else
// 0: the method is read as if it were in front of the payload.
static __always_inline __u64 fast_method(struct event *e, __u8 held, __u32 *start)
{
	if (e->captured < 5)
		return 0;
	__u64 first = *(__u64 *)e->payload;
	__u32 skip = 0;
	if (held) {
		first = first << 8 | held;
		skip = 1;
	}
	__u64 m = bytes_equal(first, 0x2020202020202020ULL);
	if (!m)
		return 0;
	// The byte index of the lowest set bit, as in head_step.
	__u32 space = ((((m & (~m + 1)) >> 7) * 0x0001020304050607ULL) >> 56) & 7;
	if (space < 3 || space >= e->captured + skip)
		return 0; // no name, or bytes past those captured (the scratch's last)
	// Upper-case letters only, byte by byte without a loop: bit 7 of
	// b + 0x3f is set from 'A' on, of b + 0x25 from past 'Z' on.
	__u64 bytes = (1ULL << (8 * space)) - 1;
	__u64 name = first & bytes, high = 0x8080808080808080ULL & bytes;
	if ((name & high) || ((name + 0x3f3f3f3f3f3f3f3fULL) & high) != high || ((name + 0x2525252525252525ULL) & high))
		return 0;
	*start = space + 1 - skip;
	return name;
}

// http1_version is x of "HTTP/1.x" at e->payload[off], 0 when that is
// not there.
static __always_inline __u8 http1_version(struct event *e, __u32 off)
{
	__u64 w = *(__u64 *)&e->payload[bounded(off, MAX_CAPTURE - 1)];
	if ((w & 0x00ffffffffffffffULL) != W8('H', 'T', 'T', 'P', '/', '1', '.', 0))
		return 0;
	return w >> 56;
}

// starts_fast_method tells whether e's payload starts a request the fast
// path could take: a method, a space and a path. (A body read on its own
// may start with a word in capitals, but hardly with "WORD /".)
static __always_inline bool starts_fast_method(struct event *e)
{
	__u32 start = 0;
	return fast_method(e, 0, &start) != 0 && start < e->captured && e->payload[bounded(start, MAX_CAPTURE - 1)] == '/';
}

// picked draws the low half of e's trace ID and judges it as the trace-ID
// ratio sampler does: true when the sampler keeps it. e carries the draw
// to user space either way, whose span (or the sampler's verdict, when e
// goes up unpicked) takes that trace ID. With every request sampled
// nothing is drawn: e's trace_low stays 0, and the agent draws the ID.
static __always_inline bool picked(struct event *e)
{
	if (sample_bound >= (1ULL << 63))
		return true; // every span: the agent draws the trace ID (a constant: the verifier drops the draw)
	__u64 low = (__u64)bpf_get_prandom_u32() << 32 | bpf_get_prandom_u32();
	if (low == 0)
		low = 1;
	e->trace_low = low;
	return (low >> 1) < sample_bound;
}

// own_span keeps in st what stands for the request (or Redis command) the
// kernel now owns for a span: when it arrived, its trace ID draw and its
// head's hash (or shape), for its record or stand-in; no traceparent.
static __always_inline void own_span(struct sock_state *st, __u64 start_ns, __u64 trace_low, __u64 head)
{
	st->req_ns = start_ns;
	st->trace_low = trace_low;
	st->head = head;
	st->has_parent = 0;
}

// fast_request tells whether the request in e (received on a connection
// in state st) is for the fast path, and if so makes st own its exchange:
// for the histograms, or for a span (FAST_SPAN). Otherwise the request
// goes to user space, with the kernel's draw of its trace ID if it made
// one, and with its head's hash.
static __always_inline bool fast_request(struct event *e, struct sock_state *st, __u8 held, __u64 start_ns)
{
	__u32 len = e->len;
	if (e->captured != len || len + (held ? 1 : 0) < 18 || len > FAST_MAX_HEAD)
		return false;
	__u32 start;
	__u64 method = fast_method(e, held, &start);
	if (!method)
		return false;
	// The scan, and so the head's hash, starts after the first byte, where
	// it starts whether that byte was held or not; the method stands for
	// it.
	struct head_scan *s = new_scan(len, held ? 0 : 1, (0xcbf29ce484222325ULL ^ method) * HASH_MUL, 0);
	if (!s)
		return false;
	scan_head(s);
	if (s->bad || !s->end || s->first_nl < 14)
		return false;
	// The body, all of it in this read and nothing behind it.
	int body = s->length ? content_length(e, s->length) : 0;
	if (body < 0 || s->body + body != len)
		return false;
	// The request line ends in " HTTP/1.x\r\n".
	__u8 minor = http1_version(e, s->first_nl - 9);
	if ((minor != '0' && minor != '1') || e->payload[bounded(s->first_nl - 10, MAX_CAPTURE - 1)] != ' ')
		return false;

	// The path: from the '/' to the query or the space before the version,
	// hashed a word at a time.
	if (e->payload[start] != '/')
		return false;
	__u64 head = s->hash ^ (s->hash >> 29);
	if (fast_spans)
		e->head_hash = head;
	if (fast_spans && s->parent) {
		// A traceparent (only with the kernel's spans: head_line): the
		// agent's sampler judges the parent, from the record or from the
		// bytes. No draw: the trace ID is the parent's.
		if (!bpf_map_lookup_elem(&http_heads, &head))
			return false;
		st->fast = FAST_OWN | FAST_SPAN;
		own_span(st, start_ns, 0, head);
		st->has_parent = 1;
		__builtin_memcpy(st->parent, &e->payload[bounded(s->parent, MAX_CAPTURE - 1)], TRACEPARENT_VALUE + 1);
		count(STAT_SPAN);
		return true;
	}

	// The sampler's draw: a request picked for a span goes to user space,
	// with the low half of its trace ID, unless the agent has its head.
	if (picked(e)) {
		if (!fast_spans || !bpf_map_lookup_elem(&http_heads, &head))
			return false;
		st->fast = FAST_OWN | FAST_SPAN;
		own_span(st, start_ns, e->trace_low, head);
		count(STAT_SPAN);
		return true;
	}
	struct route_key rk = {.tgid = st->tgid, .method = method};
	if (!path_hash(e, start, s->first_nl - 10, &rk))
		return false; // longer than the kernel follows, or odd: user space's
	__u32 *route = bpf_map_lookup_elem(&http_routes, &rk);
	if (!route)
		return false; // a path the agent has not seen answered yet
	__u32 zero = 0;
	__u32 *room = bpf_map_lookup_elem(&hist_room, &zero);
	if (!room || *room == 0)
		return false; // the histograms may be full: user space counts it
	st->fast = FAST_OWN;
	st->req_ns = start_ns;
	st->key.tgid = st->tgid;
	st->key.route = *route;
	st->key.status = 0;
	st->key.method = method;
	st->key.minor = minor;
	count(STAT_FAST);
	return true;
}

static __always_inline __u32 hist_bucket(__u64 ns)
{
	__u32 b = 0;
#pragma unroll
	for (int i = 0; i < HIST_BUCKETS - 1; i++)
		if (ns > hist_bounds_ns[i])
			b++;
	return b;
}

// fast_record counts the skipped exchange of st, answered now with status.
static __always_inline void fast_record(struct sock_state *st, __u16 status, __u64 now)
{
	st->key.status = status;
	struct hist_val *h = bpf_map_lookup_elem(&http_hist, &st->key);
	if (!h) {
		struct hist_val zero = {};
		bpf_map_update_elem(&http_hist, &st->key, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&http_hist, &st->key);
		if (!h) {
			count(STAT_FAST_LOST);
			st->dur_ns = 0;
			st->bucket = 0xff;
			return;
		}
	}
	__u64 d = now > st->req_ns ? now - st->req_ns : 0;
	__u32 b = hist_bucket(d);
	h->buckets[bounded(b, HIST_BUCKETS - 1)]++;
	h->sum_ns += d;
	if (h->count == 0 || d < h->min_ns)
		h->min_ns = d;
	if (d > h->max_ns)
		h->max_ns = d;
	h->count++;
	st->dur_ns = d;
	st->bucket = b;
}

// fast_extend moves the skipped exchange's count to its new end: a
// response written in more than one send lasts until its last. The slot
// may be another CPU's than the first count's: per CPU a bucket may go
// below zero, their sum is right.
static __always_inline void fast_extend(struct sock_state *st, __u64 now)
{
	if (st->bucket >= HIST_BUCKETS)
		return; // not counted
	struct hist_val *h = bpf_map_lookup_elem(&http_hist, &st->key);
	if (!h)
		return;
	__u64 d = now > st->req_ns ? now - st->req_ns : 0;
	__u32 b = hist_bucket(d);
	if (b != st->bucket) {
		h->buckets[bounded(st->bucket, HIST_BUCKETS - 1)]--;
		h->buckets[bounded(b, HIST_BUCKETS - 1)]++;
		st->bucket = b;
	}
	h->sum_ns += d - st->dur_ns;
	if (d > h->max_ns)
		h->max_ns = d;
	st->dur_ns = d;
}

// response_status reads the status of a status line at the start of e's
// payload: 0 when there is none.
static __always_inline __u16 response_status(struct event *e)
{
	if (e->captured < 12)
		return 0;
	if (!http1_version(e, 0) || e->payload[8] != ' ')
		return 0;
	__u8 a = e->payload[9] - '0', b = e->payload[10] - '0', c = e->payload[11] - '0';
	if (a > 9 || b > 9 || c > 9)
		return 0;
	return a * 100 + b * 10 + c;
}

// whole_response tells whether e, sent on a connection whose request the
// kernel owns for a span, is the whole response: a final status line, the
// head in what was captured, and a body of its Content-Length (up to four
// digits; none for 204 and 304) that ends the send. It puts the status and
// the body's size in e. The head's lines are scanned up to the
// Content-Length only: the blank line must then be where that length puts
// it, before the body that ends the send (nginx's length is the fifth of
// ten lines: its send's program 785 → 720 ns a run, against scanning
// them all).
static __always_inline bool whole_response(struct event *e)
{
	__u16 status = response_status(e);
	if (status < 200)
		return false;
	struct head_scan *s = new_scan(e->captured, 0, 0, 1);
	if (!s)
		return false;
	scan_head(s);
	if (s->bad)
		return false;
	int body = 0;
	if (s->length) {
		// Headers after the length are not read: a response that also
		// has Transfer-Encoding, or a second length, breaks RFC 9112,
		// and at worst gets this length as its body's size and ends its
		// exchange here (the agent's parser finds its place again at the
		// next status line).
		body = content_length(e, s->length);
		if (body < 0 || body + 4 > e->len)
			return false;
		__u32 blank = e->len - body - 4; // the blank line's "\r\n", after the last header's
		if (blank < s->length || blank + 4 > e->captured ||
		    *(__u32 *)&e->payload[bounded(blank, MAX_CAPTURE - 1)] != 0x0a0d0a0d)
			return false;
	} else if (!s->end || (status != 204 && status != 304) || s->body != e->len) {
		return false; // chunked, until the close, or more after it
	}
	e->status = status;
	e->body = body;
	return true;
}

// tcp_sock tells whether sk is a TCP socket over IPv4 or IPv6. sk is a
// typed kernel pointer here: plain loads, no probe reads.
static __always_inline bool tcp_sock(struct sock *sk)
{
	__u16 family = sk->__sk_common.skc_family;
	return (family == AF_INET || family == AF_INET6) && sk->sk_protocol == IPPROTO_TCP && sk->sk_type == SOCK_STREAM;
}

// user_sock tells whether sk is a socket of a file, a process's: the
// kernel's own (an SMB mount's, writing a pod task's file data) send in the
// task's context, where the saved registers are the task's syscall's, not
// theirs.
static __always_inline bool user_sock(struct sock *sk)
{
	struct socket *so = sk->sk_socket;
	return so && so->file;
}

// sock_ends reads sk's two ends: the addresses (16 bytes each, IPv4 in
// the first 4) and ports. It returns the family.
static __always_inline __u16 sock_ends(struct sock *sk, __u8 *laddr, __u8 *raddr, __u16 *lport, __u16 *rport)
{
	__u16 family = sk->__sk_common.skc_family;
	*lport = sk->__sk_common.skc_num;
	*rport = __builtin_bswap16(sk->__sk_common.skc_dport);
	if (family == AF_INET) {
		__be32 l = sk->__sk_common.skc_rcv_saddr;
		__be32 r = sk->__sk_common.skc_daddr;
		__builtin_memset(laddr, 0, 16);
		__builtin_memset(raddr, 0, 16);
		__builtin_memcpy(laddr, &l, 4);
		__builtin_memcpy(raddr, &r, 4);
	} else {
		// 16 bytes each: laddr is a pointer, which BPF_CORE_READ_INTO
		// would size as one.
		bpf_core_read(laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	return family;
}

// sock_fill fills e's process name and connection for sk. task is the
// current task, whose process names the event, or 0 where the current
// task is nobody in particular (softirq): the name is left empty.
static __always_inline void sock_fill(struct event *e, struct task_struct *task, struct sock *sk, __u8 role)
{
	if (task) {
		// The process's name, as in event_base, but with two plain loads
		// where BPF_CORE_READ makes two probe-read calls (about 90 ns per
		// event).
		struct task_struct *leader = task->group_leader;
		*(__u64 *)&e->comm[0] = *(__u64 *)&leader->comm[0];
		*(__u64 *)&e->comm[8] = *(__u64 *)&leader->comm[8];
	} else {
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}
	e->sock = (__u64)sk;
	e->role = role;
	e->family = sock_ends(sk, e->laddr, e->raddr, &e->lport, &e->rport);
}

// accepted tells whether sk is a connection a listener accepted: a
// server's. It has the listener's backlog, copied with the rest of the
// listener when it was made; a connection a client made has none. The
// role in the socket's storage does not tell for a connection made before
// the agent started.
static __always_inline bool accepted(struct sock *sk)
{
	return sk->sk_max_ack_backlog != 0;
}

// hold_byte keeps e, one byte read alone, as the next request's first.
// Go's server reads it on a goroutine of its own, which on another CPU
// can run while the current response's send is still in its program
// (its tracepoint runs after the bytes reached the client, which may
// have sent the next request already). That send rewrites fast whole,
// so the holding is a field that only a receive sets, and no send can
// undo it: as one of fast's flags it was lost about once in 40 000
// keep-alive requests at 20k/s, and with it the request (its rest went
// up alone, "ET / HTTP/1.1"). held and held_ns are written before the
// flag, which the sends read first.
static __always_inline void hold_byte(struct sock_state *st, struct event *e)
{
	st->held = e->payload[0];
	st->held_ns = e->ts_exit;
	asm volatile("" ::: "memory");
	*(volatile __u8 *)&st->holding = 1;
}

static __always_inline bool holding_byte(struct sock_state *st)
{
	return *(volatile __u8 *)&st->holding;
}

// drop_byte ends the holding: the byte is sent, or decided with its rest.
static __always_inline void drop_byte(struct sock_state *st)
{
	*(volatile __u8 *)&st->holding = 0;
}

// lone_method_byte tells whether e is one byte read alone that starts GET,
// HEAD, POST, PUT, PATCH or DELETE: other methods' first bytes, read
// alone, go up as before.
static __always_inline bool lone_method_byte(struct event *e)
{
	__u8 c = e->payload[0];
	return e->len == 1 && e->captured == 1 && (c == 'G' || c == 'H' || c == 'P' || c == 'D');
}

// fast_skip runs the fast path for e, received or sent on socket sk in
// state st, and tells whether e is the kernel's: not to be sent.
static __always_inline int fast_skip(struct sock *sk, struct sock_state *st, struct event *e, __u8 dir)
{
	__u8 f = st->fast;
	bool held = holding_byte(st);
	// A byte held waits for the next receive, the rest of its request:
	// through the response of an exchange the kernel owns (see below),
	// and through the sends of a response user space has, whose last one
	// the client's next request can beat on loopback as well. Sent before
	// such a send, the byte would put the rest of its request after a
	// response, where it looks like a request of its own ("OST /").
	if (held && dir == DIR_INGRESS) {
		// The rest of the request whose first byte is held, or anything
		// else: either way the byte is decided now.
		drop_byte(st);
		if ((f & (FAST_OWN | FAST_SPAN)) == (FAST_OWN | FAST_SPAN)) {
			// More of the next request before the response of the one
			// owned for a span: pipelined, as below. The owned request
			// goes up first, then the byte.
			st->fast = FAST_OFF;
			return FAST_SEND_REQUEST_HELD;
		}
		if ((f & (FAST_OWN | FAST_RESP | FAST_SPAN | FAST_HANDOFF)) == (FAST_OWN | FAST_RESP))
			st->fast = f = f & FAST_OFF; // the owned exchange is over
		if (!(f & (FAST_OWN | FAST_PENDING | FAST_OFF)) && fast_request(e, st, st->held, st->held_ns))
			return FAST_SKIP;
		if (f & FAST_OWN)
			st->fast = f | FAST_HANDOFF | FAST_OFF; // pipelined, as below
		else
			st->fast = f | FAST_PENDING;
		return FAST_SEND_HELD;
	}
	if (dir == DIR_INGRESS) {
		if (f & FAST_OWN) {
			// A first byte alone: Go's background read, which gets the
			// next request's first byte as soon as the client sends it.
			// On loopback that can be before this exchange's response
			// send is seen here, its tracepoint running after the bytes
			// were delivered, or before the last of its sends is.
			// Held, as below, until the response has gone by (HTTP/1
			// answers in order: right for a pipelining client too),
			// and fast left as it is: a response's send may be
			// rewriting it on the other CPU (hold_byte), and a last
			// send of the skipped response, seen after the byte, is
			// still its own. Any byte, not only a method's first that
			// the fast path takes: OPTIONS's "O" too, whose request is
			// decided with its rest.
			if (!(f & FAST_HANDOFF) && e->len == 1 && e->captured == 1) {
				hold_byte(st, e);
				return FAST_SKIP;
			}
			if (f & FAST_SPAN) {
				// A request before the owned one's response: pipelined.
				// Both go to user space, and what follows.
				st->fast = FAST_OFF;
				return FAST_SEND_REQUEST;
			}
			if (!(f & FAST_RESP)) {
				// A request before the skipped one's response: pipelined.
				st->fast = f | FAST_HANDOFF | FAST_OFF;
				return FAST_SEND;
			}
			if (f & FAST_HANDOFF)
				return FAST_SEND;
			st->fast = f = f & FAST_OFF; // the skipped exchange is over
		}
		if (f & FAST_PENDING) {
			// More of a request user space has (the rest of its head,
			// its body), or a request pipelined behind it: both go to
			// user space, which pairs them. A new request (it starts with
			// a method the fast path takes) ends the fast path on this
			// connection: its client pipelines.
			if (!e->captured || starts_fast_method(e))
				st->fast = f | FAST_OFF; // (or counted: it may be one)
			return FAST_SEND;
		}
		if ((f & FAST_OFF) || !accepted(sk))
			return FAST_SEND;
		if (lone_method_byte(e)) {
			hold_byte(st, e);
			return FAST_SKIP;
		}
		if (fast_request(e, st, 0, e->ts_exit))
			return FAST_SKIP;
		st->fast = f | FAST_PENDING;
		return FAST_SEND;
	}
	if (!(f & FAST_OWN)) {
		// The response of what user space has ends its request, but an
		// interim one (100 Continue) does not: the body comes after it,
		// and a first byte of it read alone is the body's, not held.
		if (f & FAST_PENDING) {
			__u16 status = response_status(e);
			if (!status || status >= 200 || status == 101)
				st->fast = f & ~FAST_PENDING;
		}
		return FAST_SEND;
	}
	if (f & FAST_SPAN) {
		// The owned request's response: the exchange ends here, as a
		// record, and a byte held stays held for the rest of its
		// request. Or it goes to user space from here on, and so does
		// a byte held, after the stand-in: more of the response may
		// follow, and the rest of the byte's request, read after it,
		// must not be taken for a request of its own.
		if (whole_response(e)) {
			st->fast = f & FAST_OFF;
			return FAST_SEND_SPAN;
		}
		if (holding_byte(st)) {
			st->fast = FAST_OFF;
			drop_byte(st); // sent now
			return FAST_SEND_REQUEST_HELD;
		}
		st->fast = f & FAST_OFF;
		return FAST_SEND_REQUEST;
	}
	__u16 status = response_status(e);
	if (!(f & FAST_RESP)) {
		if (!e->captured) {
			// Counted, not read (io_uring, splice): whether it is the
			// owned exchange's response cannot be told. The exchange is
			// given up, and the fast path on this connection with it. A
			// byte held stays held: the rest of its request sends it.
			st->fast = FAST_OFF;
			return FAST_SEND;
		}
		if (!status) {
			// Not a status line: taken for the rest of the response
			// before, which user space has, still going out (a server that
			// reads the next request while it writes: Node.js, aiohttp).
			// It goes up, and the next status line is taken for the
			// skipped exchange's response. (A status line split across
			// sends breaks that; it did before too.)
			return FAST_SEND;
		}
		if (status < 200 && status != 101) {
			// An interim response (100 Continue, 103 Early Hints): the
			// skipped exchange goes on until its final status. Nothing of
			// it reaches user space.
			return FAST_SKIP;
		}
		fast_record(st, status, e->ts_exit);
		st->fast = f | FAST_RESP;
		return FAST_SKIP;
	}
	// FAST_HANDOFF: the response of the request user space has starts
	// with its status line, or may be a send counted, not read.
	if (status || !e->captured) {
		st->fast = FAST_OFF;
		return FAST_SEND;
	}
	fast_extend(st, e->ts_exit);
	return FAST_SKIP;
}

// ---------------------------------------------------------------------------
// Server-side Redis commands dropped in the kernel (socket hooks only).
//
// A Redis server's own spans are all the agent makes of the commands it
// serves (no metrics: a database observed from its own side), and RESP
// carries no trace context, so each is a root span that the trace-ID
// ratio alone keeps or drops. When spans are sampled, the kernel draws
// the trace ID of a server's command as the HTTP fast path does, and
// drops the commands it does not pick, with their replies: user space
// never parses them. A picked command goes up with the trace ID's low
// half (trace_low).
//
// Only what user space can do without is dropped: one whole command in
// one read (an array of bulk strings, every byte captured), on a
// connection a listener accepted, whose previous exchange is over. Every
// command read whole is still classified: those that change how user space
// reads what follows always go up (SELECT, HELLO, AUTH, RESET, and MULTI
// to EXEC or DISCARD: a transaction is one span), and those after which
// the connection is no longer one reply per command (SUBSCRIBE, MONITOR,
// SYNC, CLIENT REPLY, CLIENT TRACKING) end the drop on the connection,
// as does a read that starts an exchange with anything but an array
// (inline commands, or another protocol).
//
// Where a reply ends is not parsed here. A Redis server sends what it has
// in one write() when it can: a reply larger than its 16 kB chunk goes out
// in several sends (in Redis 6 write()s, the first of what fitted its
// buffer, which may be less than a chunk; writev()s in Redis 7), and a
// full socket makes a short write. All of them go out before the server
// reads again, so a command read after a whole write() of less than a
// chunk starts a new exchange (with a client that waits for its replies:
// one that pipelines is caught as below); after any other send
// the next command goes to user space, with its reply. A command read
// before any send since one went to user space is pipelined, and so is
// one read before the reply to a dropped command (it goes up flagged
// EVENT_GAP: the next reply is the dropped one's): either ends the drop on
// the connection. A command read after a send that may not have ended the
// dropped one's reply goes up flagged EVENT_LOST.
//
// The kernel's spans of Redis commands (redis_spans). The span of a
// command is its name, its arguments' count and its reply's error, if
// any: the arguments themselves are not in it (db.query.text has a "?"
// for each, unless the agent is told to keep keys or values, when it
// registers nothing). So a command the drop could take, picked for a
// span, whose shape (redis_shape: its name as it came and how many
// arguments) the agent has registered in http_heads, is not sent either:
// its reply's send, when it is whole (send_open) and not an error, sends
// one EVENT_REDIS record with the times; any other reply, a command read
// before it, or a close, sends EVENT_REDIS_REQUEST first, which stands
// for a command of that shape, and the rest goes as data.

volatile const __u8 fast_redis = 0;  // the drop, or the kernel's spans of Redis commands, is on
volatile const __u8 redis_drop = 0;  // the drop is
volatile const __u8 redis_spans = 0; // the kernel's spans of Redis commands are

#define REDIS_SKIP 1    // the current command was dropped: its reply's sends are too
#define REDIS_REPLIED 2 // a send of that reply came
#define REDIS_OPEN 4    // the last send may not have ended its reply (send_open)
#define REDIS_PENDING 8 // a command went to user space, and no send came since
#define REDIS_TX 16     // in a transaction: every command goes to user space
#define REDIS_OFF 32    // nothing dropped on this connection any more
#define REDIS_SPAN 64   // the current command is the kernel's, for a span (redis_spans)

#define REDIS_MAX_ARGS 64
#define REDIS_SHAPE_SEED 0x6a09e667f3bcc908ULL // not the HTTP heads' seed: they share http_heads
#define REDIS_MIN_COMMAND 14 // "*1\r\n$4\r\nPING\r\n"

// What a command is to the drop.
enum redis_kind {
	REDIS_DROPPABLE = 0,
	REDIS_KEEP = 1,     // goes to user space
	REDIS_STOP = 2,     // goes to user space, and ends the drop on the connection
	REDIS_TX_BEGIN = 3, // MULTI
	REDIS_TX_END = 4,   // EXEC, DISCARD, RESET
};

// redis_scan walks a command's arguments, for bpf_loop.
struct redis_scan {
	__u32 len;  // payload bytes
	__u32 pos;  // the next argument's "$<length>\r\n"
	__u32 name; // where the command's name starts
	__u32 name_len;
	__u32 sub; // and its second argument
	__u32 sub_len;
	__u8 bad; // not one whole command of bulk strings
};

// redis_arg is bpf_loop's step over a command's arguments: a bulk string
// of at most 999 bytes.
static long redis_arg(__u32 i, struct redis_scan *s)
{
	__u32 zero = 0;
	struct event *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 1;
	__u32 pos = s->pos;
	if (pos + 4 > s->len || e->payload[bounded(pos, MAX_CAPTURE - 1)] != '$')
		goto bad;
	__u32 p = pos + 1;
	int n = decimal(e, &p, 3);
	if (n < 0 || e->payload[bounded(p + 1, MAX_CAPTURE - 1)] != '\n')
		goto bad;
	__u32 data = p + 2, end = data + n;
	if (end + 2 > s->len || e->payload[bounded(end, MAX_CAPTURE - 1)] != '\r' ||
	    e->payload[bounded(end + 1, MAX_CAPTURE - 1)] != '\n')
		goto bad;
	if (i == 0) {
		s->name = data;
		s->name_len = n;
	} else if (i == 1) {
		s->sub = data;
		s->sub_len = n;
	}
	s->pos = end + 2;
	return 0;
bad:
	s->bad = 1;
	return 1;
}

// redis_word is the up to 8 bytes at e->payload[at], letters folded to
// lower case, the bytes past len zeroed. (Other bytes change too: a name
// that folds to a kept one is kept, which only costs the drop.)
static __always_inline __u64 redis_word(struct event *e, __u32 at, __u32 len)
{
	__u64 w = *(__u64 *)&e->payload[bounded(at, MAX_CAPTURE - 1)] | LOWER8;
	if (len < 8)
		w &= (1ULL << (8 * len)) - 1;
	return w;
}

static __always_inline enum redis_kind redis_classify(struct event *e, struct redis_scan *s)
{
	__u64 w = redis_word(e, s->name, s->name_len);
	switch (s->name_len) {
	case 4:
		if (w == W8('e', 'x', 'e', 'c', 0, 0, 0, 0))
			return REDIS_TX_END;
		if (w == W8('a', 'u', 't', 'h', 0, 0, 0, 0))
			return REDIS_KEEP;
		if (w == W8('s', 'y', 'n', 'c', 0, 0, 0, 0))
			return REDIS_STOP;
		break;
	case 5:
		if (w == W8('m', 'u', 'l', 't', 'i', 0, 0, 0))
			return REDIS_TX_BEGIN;
		if (w == W8('r', 'e', 's', 'e', 't', 0, 0, 0))
			return REDIS_TX_END;
		if (w == W8('h', 'e', 'l', 'l', 'o', 0, 0, 0))
			return REDIS_KEEP;
		if (w == W8('p', 's', 'y', 'n', 'c', 0, 0, 0))
			return REDIS_STOP;
		break;
	case 6:
		if (w == W8('s', 'e', 'l', 'e', 'c', 't', 0, 0))
			return REDIS_KEEP;
		if (w == W8('c', 'l', 'i', 'e', 'n', 't', 0, 0)) {
			__u64 sub = redis_word(e, s->sub, s->sub_len);
			if ((s->sub_len == 5 && sub == W8('r', 'e', 'p', 'l', 'y', 0, 0, 0)) ||
			    (s->sub_len == 8 && sub == W8('t', 'r', 'a', 'c', 'k', 'i', 'n', 'g')))
				return REDIS_STOP; // commands without replies; replies with pushes among them
		}
		break;
	case 7:
		if (w == W8('d', 'i', 's', 'c', 'a', 'r', 'd', 0))
			return REDIS_TX_END;
		if (w == W8('m', 'o', 'n', 'i', 't', 'o', 'r', 0))
			return REDIS_STOP;
		break;
	case 8:
		if (w == W8('r', 'e', 'p', 'l', 'c', 'o', 'n', 'f'))
			return REDIS_STOP;
		break;
	case 9:  // SUBSCRIBE
	case 10: // PSUBSCRIBE, SSUBSCRIBE
		if (w == W8('s', 'u', 'b', 's', 'c', 'r', 'i', 'b') || w == W8('p', 's', 'u', 'b', 's', 'c', 'r', 'i') ||
		    w == W8('s', 's', 'u', 'b', 's', 'c', 'r', 'i'))
			return REDIS_STOP;
		break;
	}
	return REDIS_DROPPABLE;
}

// redis_tail_ends_tx tells whether e's payload ends with the command EXEC
// or DISCARD (case folded): a transaction pipelined whole in one read.
static __always_inline bool redis_tail_ends_tx(struct event *e)
{
	__u32 len = e->len;
	if (len < 17)
		return false;
	__u64 end = *(__u64 *)&e->payload[bounded(len - 8, MAX_CAPTURE - 1)] | LOWER8;
	if (end == W8('\r' | 0x20, '\n' | 0x20, 'e', 'x', 'e', 'c', '\r' | 0x20, '\n' | 0x20)) {
		// "*1\r\n$4" before it
		__u64 head = *(__u64 *)&e->payload[bounded(len - 14, MAX_CAPTURE - 1)] & 0xffffffffffffULL;
		return head == W8('*', '1', '\r', '\n', '$', '4', 0, 0);
	}
	if (end == W8('i', 's', 'c', 'a', 'r', 'd', '\r' | 0x20, '\n' | 0x20)) {
		// "*1\r\n$7\r\nD" before it
		__u64 head = *(__u64 *)&e->payload[bounded(len - 17, MAX_CAPTURE - 1)];
		return head == W8('*', '1', '\r', '\n', '$', '7', '\r', '\n') &&
		       (e->payload[bounded(len - 9, MAX_CAPTURE - 1)] | 0x20) == 'd';
	}
	return false;
}

// redis_shape is the hash of what the span of the command s scanned in e
// is made of, when its arguments are not in it: its name, its bytes as
// they came, and its n - 1 arguments' count. 0 for a name longer than 16
// bytes, which the kernel's spans leave to user space. bpf.RedisShape is
// the same in Go.
static __always_inline __u64 redis_shape(struct event *e, struct redis_scan *s, __u32 n)
{
	__u32 len = s->name_len;
	if (len > 16)
		return 0;
	__u64 w0 = *(__u64 *)&e->payload[bounded(s->name, MAX_CAPTURE - 1)];
	__u64 w1 = *(__u64 *)&e->payload[bounded(s->name + 8, MAX_CAPTURE - 1)];
	if (len < 8) {
		w0 &= (1ULL << (8 * len)) - 1;
		w1 = 0;
	} else if (len == 8) {
		w1 = 0;
	} else if (len < 16) {
		w1 &= (1ULL << (8 * (len - 8))) - 1;
	}
	__u64 h = (REDIS_SHAPE_SEED ^ ((__u64)n << 8 | len)) * HASH_MUL;
	h = (h ^ w0) * HASH_MUL;
	h = (h ^ w1) * HASH_MUL;
	return h ^ (h >> 29);
}

// redis_command reads the command that starts e, received on a server
// connection whose transaction flag is tx (REDIS_TX or 0), and marks it
// gone to user space with what it changes (a transaction, the end of the
// drop). When drop allows and it is one whole command that user space
// can do without, the kernel draws its trace ID: unpicked, it is
// dropped (true); picked, it goes up with the draw.
static __always_inline bool redis_command(struct event *e, struct sock_state *st, __u8 tx, bool drop)
{
	st->redis = tx | REDIS_PENDING;
	if (!e->captured || e->payload[0] != '*') {
		// Not an array at the start of an exchange: another protocol,
		// or inline commands, which are left to user space (or bytes
		// counted, not read: NR_COUNT_ONLY).
		st->redis = REDIS_OFF;
		return false;
	}
	__u32 len = e->len;
	if (e->captured != len || len < REDIS_MIN_COMMAND)
		return false;
	// "*<1 to 64>\r\n"
	__u8 d1 = e->payload[1] - '0', d2 = e->payload[2] - '0';
	__u32 n, pos;
	if (d1 > 9 || d1 == 0)
		return false;
	if (d2 <= 9) {
		n = d1 * 10 + d2;
		pos = 3;
	} else {
		n = d1;
		pos = 2;
	}
	if (n > REDIS_MAX_ARGS || e->payload[pos] != '\r' || e->payload[pos + 1] != '\n')
		return false;
	struct redis_scan s = {.len = len, .pos = pos + 2};
	bpf_loop(n, redis_arg, &s, 0);
	if (s.bad || s.name_len == 0)
		return false;
	// s.pos < len: more commands follow in the same read (pipelined,
	// like a client library's handshake); the first still says what it
	// changes, but none is dropped.
	bool one = s.pos == len;
	switch (redis_classify(e, &s)) {
	case REDIS_STOP:
		st->redis = REDIS_OFF;
		return false;
	case REDIS_TX_BEGIN:
		if (one || !redis_tail_ends_tx(e))
			st->redis = REDIS_PENDING | REDIS_TX;
		return false;
	case REDIS_TX_END:
		st->redis = REDIS_PENDING;
		return false;
	case REDIS_KEEP:
		return false;
	case REDIS_DROPPABLE:
		break;
	}
	if (tx || !one)
		return false;
	__u64 shape = 0;
	if (redis_spans) {
		// Even when it is not taken here: the agent learns shapes from
		// the commands it parses.
		shape = redis_shape(e, &s, n);
		e->head_hash = shape;
	}
	if (!drop)
		return false;
	// The sampler's draw, as for HTTP.
	if (picked(e)) {
		if (!shape || !bpf_map_lookup_elem(&http_heads, &shape))
			return false;
		st->redis = REDIS_SPAN;
		own_span(st, e->ts_exit, e->trace_low, shape);
		count(STAT_REDIS_SPAN);
		return true;
	}
	if (!redis_drop)
		return false;
	st->redis = REDIS_SKIP;
	count(STAT_REDIS_DROP);
	return true;
}

// REDIS_CHUNK is what Redis writes of a reply at a time: a send this
// large may be followed by more of the same reply (Redis 6 writes a large
// reply in several whole write()s, Redis 7 in writev()s).
#define REDIS_CHUNK 16384

// send_open tells whether a send of ret bytes, by syscall nr (as
// on_sock_data took it: NR_COUNT_ONLY when not read) whose registers are
// regs, may leave a reply unfinished: any but a whole write() or send() of
// less than REDIS_CHUNK bytes.
static __always_inline bool send_open(__u32 nr, struct pt_regs *regs, int ret)
{
	return (nr != NR_WRITE && nr != NR_SENDTO) || ret < (int)regs->dx || ret >= REDIS_CHUNK;
}

// redis_whole_reply tells whether e, captured whole, is one whole reply
// that is not an error: a line (a simple string, an integer, a null, a
// double, a boolean) or a bulk string of at most 9999 bytes whose length
// is the send's. Anything else, an aggregate too, gets a stand-in:
// Redis 6 writes the part of a reply that fits its 16 kB buffer first,
// which may be a bulk string's header alone or half an array's elements,
// in a whole write() that send_open cannot tell from a whole reply.
static __always_inline bool redis_whole_reply(struct event *e)
{
	__u32 len = e->len;
	if (len < 3 || len > e->captured || e->payload[bounded(len - 2, MAX_CAPTURE - 1)] != '\r' ||
	    e->payload[bounded(len - 1, MAX_CAPTURE - 1)] != '\n')
		return false;
	switch (e->payload[0]) {
	case '+':
	case ':':
	case '_':
	case ',':
	case '#':
		return true; // one line, written whole
	case '$': {
		if (e->payload[1] == '-')
			return len == 5; // "$-1\r\n", RESP2's null
		__u32 at = 1;
		int n = decimal(e, &at, 4);
		return n >= 0 && at + 2 + n + 2 == len;
	}
	}
	return false;
}

// redis_skip runs the drop for e, received or sent on socket sk in state
// st by syscall nr (as on_sock_data took it) whose saved registers are
// regs, and tells whether e is the kernel's: not to be sent. The sends of
// a dropped command's reply never get here (on_sock_data).
static __always_inline int redis_skip(struct sock *sk, struct sock_state *st, struct event *e, __u8 dir, __u32 nr, struct pt_regs *regs)
{
	__u8 r = st->redis;
	if (r & REDIS_OFF)
		return FAST_SEND;
	if (r & REDIS_SPAN) {
		if (dir == DIR_INGRESS) {
			// A read before the owned command's reply: the client
			// pipelines. Both go up, the owned one first, and the
			// drop ends.
			st->redis = REDIS_OFF;
			return FAST_SEND_REQUEST;
		}
		// Its reply: a record when this send is all of it and it is not
		// an error, whose message is in the span.
		bool open = send_open(nr, regs, e->len);
		st->redis = open ? REDIS_OPEN : 0;
		if (!open && redis_whole_reply(e))
			return FAST_SEND_SPAN;
		return FAST_SEND_REQUEST;
	}
	if (dir == DIR_EGRESS) {
		r &= ~(REDIS_PENDING | REDIS_OPEN);
		if (send_open(nr, regs, e->len))
			r |= REDIS_OPEN;
		st->redis = r;
		return FAST_SEND;
	}
	bool drop = true;
	if (r & REDIS_SKIP) {
		// The dropped command's exchange ends with this read, unless its
		// reply may not be whole: then user space is told what it misses.
		if (!(r & REDIS_REPLIED)) {
			// Read before the dropped command's reply: the client
			// pipelines, and the kernel cannot tell replies apart.
			e->flags |= EVENT_GAP;
			st->redis = REDIS_OFF;
			return FAST_SEND;
		}
		if (r & REDIS_OPEN) {
			e->flags |= EVENT_LOST;
			drop = false;
		}
		r = 0;
	}
	if (r & REDIS_PENDING) {
		// More of a command user space has, or the next one before its
		// reply: the client pipelines.
		if (!e->captured || e->payload[0] == '*')
			st->redis = r | REDIS_OFF;
		return FAST_SEND;
	}
	if (!accepted(sk)) {
		// A client's connection, whose replies may look like commands.
		st->redis = REDIS_OFF;
		return FAST_SEND;
	}
	// After a send that may not have ended its reply, this exchange is
	// user space's; what the command changes still counts.
	if (r & REDIS_OPEN)
		drop = false;
	return redis_command(e, st, r & REDIS_TX, drop) ? FAST_SKIP : FAST_SEND;
}

// submit_first sends, before e, what st kept back of what came in on e's
// connection, as an event of e's connection and process (filled): the
// byte it holds (type EVENT_DATA: one byte, at its time), or the request
// it owned for a span (EVENT_HTTP_REQUEST, with its traceparent's value
// as payload if it had one; EVENT_REDIS_REQUEST for a Redis command).
// User space sees the bytes in order. e is as it was after.
static __always_inline void submit_first(struct event *e, struct sock_state *st, __u8 type)
{
	__u32 len = e->len, captured = e->captured;
	__u64 enter = e->ts_enter, exit = e->ts_exit, low = e->trace_low, head = e->head_hash;
	__u8 was = e->type, dir = e->dir, tail = e->tail_len, first = e->payload[0];
	__u64 saved[(TRACEPARENT_VALUE + 1) / 8]; // e's payload, where the value goes
	// Read once: another CPU may own a request of the connection meanwhile.
	bool swap = type != EVENT_DATA && st->has_parent;
	e->type = type;
	e->dir = DIR_INGRESS;
	e->tail_len = 0;
	if (type != EVENT_DATA) {
		e->len = e->captured = 0;
		e->ts_enter = e->ts_exit = st->req_ns;
		e->trace_low = st->trace_low;
		e->head_hash = st->head;
		if (swap) {
			__builtin_memcpy(saved, e->payload, sizeof(saved));
			__builtin_memcpy(e->payload, st->parent, sizeof(saved));
			e->captured = TRACEPARENT_VALUE;
		}
	} else {
		// The rest's trace ID draw and head hash are the request's.
		e->len = e->captured = 1;
		e->ts_enter = e->ts_exit = st->held_ns;
		e->payload[0] = st->held;
	}
	submit(e);
	e->type = was;
	e->len = len;
	e->captured = captured;
	e->ts_enter = enter;
	e->ts_exit = exit;
	e->trace_low = low;
	e->head_hash = head;
	e->dir = dir;
	e->tail_len = tail;
	if (swap)
		__builtin_memcpy(e->payload, saved, sizeof(saved));
	else
		e->payload[0] = first;
}

// ---------------------------------------------------------------------------
// HTTP/2 frames past the prefix.
//
// One write of an HTTP/2 connection holds many frames, and a big one (a
// large message's DATA) puts those after it past the captured prefix. A
// header block among them, unseen, leaves the agent's copy of the
// sender's HPACK table behind for the rest of the connection, and with it
// every later request whose path that table holds. So on a connection
// that started with the client preface the kernel follows each
// direction's frames by their lengths, as the agent does, and adds to the
// event what the agent reads of the frames past the prefix: each frame
// header, and the payload of header blocks (HEADERS, PUSH_PROMISE,
// CONTINUATION), of RST_STREAM, GOAWAY and SETTINGS, and a padded DATA
// frame's pad length. They follow the prefix as pieces, [offset u32]
// [length u16][bytes], e->extra bytes of them, fewer than PIECE_ROOM with
// the prefix. DATA payloads, the bulk, are never copied. A direction whose
// frames cannot be followed (no room left for a header, more frames than
// a walk takes, more vectors than copy_iov reads, a sendfile, a header
// that is not valid) waits for a segment that starts with plausible
// frames (h2_plausible), as the agent waits for its own kind
// (h2Plausible in tracer/http2.go).

volatile const __u8 h2_frames = 1; // the loader turns it off where the verifier refuses it
#define H2_ON 1
#define H2_PREFACE 24        // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define H2_MAX_FRAMES 256    // frames followed per segment (and H2_INLINE_FRAMES before them)
#define H2_INLINE_FRAMES 8
#define H2_QUIET 1           // h2_follow: the segment is frames the agent does not read, alone
// A connection's segments of window updates and pings alone go up at least
// once per H2_LIVE ticks of 2^30 ns (about 8.6 s), so that the agent, which
// keeps an idle connection's HPACK tables 30 minutes, sees that it lives.
#define H2_TICK_SHIFT 30
#define H2_LIVE 8
#define H2_RESYNC_FRAME 16384 // the largest frame a resync takes (SETTINGS_MAX_FRAME_SIZE's default)
#define PIECE_HEADER 6
#define PIECE_ROOM (2 * MAX_CAPTURE) // the prefix and the pieces are shorter: submit masks their length with PIECE_ROOM - 1

// h2_key is 0, the key of every per-CPU map the walk looks up (the
// scratch event's SCRATCH_TASK too): in a constant, not on the stack,
// whose 512 bytes the receive and send programs with the walk's calls
// need all of.
const volatile __u32 h2_key = 0;

// h2_walk follows the frames of one segment, for bpf_loop.
struct h2_walk {
	__u64 buf;      // the syscall's buffer, or its iovec array (vectored)
	__u32 total;    // bytes it moved
	__u32 captured; // of which the prefix in the event
	__u32 pos;      // the next frame header's offset in them
	__u32 room;     // where the next piece goes in e->payload
	__u32 last;     // where the last piece starts in e->payload; 0: none
	__u32 last_end; // and the offset it ends at
	__u32 left;     // as in h2_dir
	__u32 want;
	__u8 vectored;
	__u8 nhdr;
	__u8 lost;
	__u8 hdr[16]; // a frame header cut by a segment's end: 9 bytes, and room to copy words
};

// h2_walks holds the walk of the program running on each CPU.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct h2_walk);
} h2_walks SEC(".maps");

// h2_piece copies [off, off + n) of what the syscall moved into the
// event's pieces, onto the last piece when that ends at off: from the
// syscall's buffer, or from its vectors as copy_iov left them in
// iov_scratch. It returns where the bytes are in e->payload, 0 when there
// was no room for them or they could not be read. A global function, as
// copy_iov, so that its loop is checked once; it looks up the walk and
// the event itself, so that its callers keep little across the call.
__noinline int h2_piece(__u64 off64, __u64 n64)
{
	struct h2_walk *w = bpf_map_lookup_elem(&h2_walks, (const void *)&h2_key);
	struct event *e = bpf_map_lookup_elem(&scratch, (const void *)&h2_key); // SCRATCH_TASK
	if (!w || !e)
		return 0;
	__u32 off = off64, n = n64;
	bool join = w->last && w->last_end == off;
	__u32 at = w->room + (join ? 0 : PIECE_HEADER);
	if (n == 0 || n >= MAX_CAPTURE || at + n >= PIECE_ROOM)
		return 0;
	__u32 to = at, from = off, rest = n;
	if (!w->vectored) {
		if (bpf_probe_read_user(&e->payload[bounded(to, PIECE_ROOM - 1)], bounded(rest, MAX_CAPTURE - 1),
					(void *)w->buf + from))
			return 0;
		rest = 0;
	} else {
		struct iov_array *vecs = bpf_map_lookup_elem(&iov_scratch, (const void *)&h2_key);
		if (!vecs || vecs->addr != w->buf)
			return 0; // not this syscall's vectors: copy_iov did not read them
		__u64 before = 0; // bytes of the transfer before vector i
		for (int i = 0; i < MAX_IOV; i++) {
			if (i >= vecs->cnt || rest == 0)
				break;
			__u64 len = vecs->v[i].len;
			if (from < before + len) {
				__u64 k = before + len - from;
				if (k > rest)
					k = rest;
				if (bpf_probe_read_user(&e->payload[bounded(to, PIECE_ROOM - 1)], bounded(k, MAX_CAPTURE - 1),
							(void *)vecs->v[i].base + (from - before)))
					return 0;
				to += k;
				from += k;
				rest -= k;
			}
			before += len;
		}
	}
	if (rest)
		return 0;
	if (join) {
		*(__u16 *)&e->payload[bounded(w->last + 4, PIECE_ROOM - 1)] += n;
	} else {
		*(__u32 *)&e->payload[bounded(w->room, PIECE_ROOM - 1)] = off;
		*(__u16 *)&e->payload[bounded(w->room + 4, PIECE_ROOM - 1)] = n;
		w->last = w->room;
	}
	w->room = at + n;
	w->last_end = off + n;
	return at;
}

// h2_want copies what of [start, start + n) lies past the prefix, as far
// as there is room: a header block cut short is still worth its start.
static __always_inline void h2_want(struct h2_walk *w, struct event *e, __u32 start, __u32 n)
{
	__u32 end = start + n;
	if (end > w->total)
		end = w->total;
	if (start < w->captured)
		start = w->captured;
	if (end <= start)
		return;
	n = end - start;
	__u32 at = w->room + (w->last && w->last_end == start ? 0 : PIECE_HEADER);
	if (at + 1 >= PIECE_ROOM)
		return;
	if (n > PIECE_ROOM - 1 - at)
		n = PIECE_ROOM - 1 - at;
	if (n >= MAX_CAPTURE)
		n = MAX_CAPTURE - 1;
	h2_piece(start, n);
}

// h2_valid tells whether h is a frame header a peer may send, by the
// rules RFC 9113 gives for each type that the header alone shows (its
// stream, its length); extension types pass. Anything else means the
// walk is not where it thinks: bytes no event reported (a splice out of
// the socket; the syscall hooks' io_uring, sendmmsg and recvmmsg), a
// wrong guess at a resync.
static __always_inline bool h2_valid(__u8 *h)
{
	__u32 len = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
	bool zero = !((h[5] & 0x7f) | h[6] | h[7] | h[8]); // stream 0
	switch (h[3]) {
	case 0x0: // DATA
	case 0x1: // HEADERS
	case 0x9: // CONTINUATION
		return !zero;
	case 0x2: // PRIORITY
		return !zero && len == 5;
	case 0x3: // RST_STREAM
		return !zero && len == 4;
	case 0x4: // SETTINGS
		return zero && len % 6 == 0;
	case 0x5: // PUSH_PROMISE
		return !zero && len >= 4;
	case 0x6: // PING
		return zero && len == 8;
	case 0x7: // GOAWAY
		return zero && len >= 8;
	case 0x8: // WINDOW_UPDATE
		return len == 4;
	}
	return true;
}

// h2_frame takes the frame whose header is h and whose payload starts at
// offset start: it copies the part of the payload the agent reads, and
// moves on to the next frame, in this segment or a later one.
static __always_inline void h2_frame(struct h2_walk *w, struct event *e, __u8 *h, __u32 start)
{
	if (!h2_valid(h)) {
		w->lost = 1;
		w->pos = w->total;
		return;
	}
	__u32 len = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
	__u8 type = h[3], flags = h[4];
	__u32 want = 0;
	switch (type) {
	case 0x1: // HEADERS
	case 0x5: // PUSH_PROMISE
	case 0x9: // CONTINUATION
		want = len;
		break;
	case 0x3: // RST_STREAM
	case 0x7: // GOAWAY: the last stream and the error code
		want = len < 8 ? len : 8;
		break;
	case 0x4: // SETTINGS: the agent reads ten of them
		want = len < 60 ? len : 60;
		break;
	case 0x0: // DATA: its pad length, when padded
		want = (flags & 0x8) && len ? 1 : 0;
		break;
	}
	h2_want(w, e, start, want);
	__u64 end = (__u64)start + len;
	if (end > w->total) {
		w->left = end - w->total;
		w->want = (__u64)start + want > w->total ? start + want - w->total : 0;
		w->pos = w->total;
	} else {
		w->left = 0;
		w->want = 0;
		w->pos = end;
	}
}

// h2_carry takes up, at the start of a segment, the frame the last one
// ended in: the rest of its header, or of its payload.
static __always_inline long h2_carry(struct h2_walk *w, struct event *e)
{
	if (w->nhdr) {
		// The rest of the header the last segment ended in: in the
		// prefix, unless a vectored call's first vectors were too short
		// to fill it; then it is read, and goes up, as a piece.
		__u32 have = w->nhdr < 9 ? w->nhdr : 8;
		__u32 need = 9 - have;
		if (need > w->total)
			need = w->total;
		__u32 at = 0;
		if (need > w->captured) {
			at = h2_piece(0, need);
			if (!at) {
				w->lost = 1;
				return 1;
			}
		}
		for (int i = 0; i < 8; i++)
			if (i < need)
				w->hdr[(have + i) & 15] = e->payload[bounded(at + i, PIECE_ROOM - 1)];
		w->nhdr = have + need;
		w->pos = need;
		if (w->nhdr == 9) {
			w->nhdr = 0;
			h2_frame(w, e, w->hdr, need);
		}
	} else if (w->left) {
		// The rest of a frame the last segment ended in.
		__u32 n = w->left < w->total ? w->left : w->total;
		h2_want(w, e, 0, w->want < n ? w->want : n);
		w->want = w->want < n ? 0 : w->want - n;
		w->left -= n;
		w->pos = n;
	}
	return 0;
}

// h2_step is bpf_loop's step over a segment's frames: one frame header.
// The walk is looked up, not handed over on the stack: the verifier then
// knows nothing of its fields from one step to the next, and checks the
// step once or twice instead of once for every value it has seen them take.
static long h2_step(__u32 i, void *unused)
{
	struct h2_walk *w = bpf_map_lookup_elem(&h2_walks, (const void *)&h2_key);
	struct event *e = bpf_map_lookup_elem(&scratch, (const void *)&h2_key); // SCRATCH_TASK
	if (!w || !e)
		return 1;
	__u32 pos = w->pos;
	if (pos >= w->total)
		return 1;
	if (w->nhdr || w->left)
		return h2_carry(w, e);
	__u32 n = w->total - pos;
	if (n > 9)
		n = 9;
	__u32 at = pos;
	if (pos + n > w->captured) {
		at = h2_piece(pos, n);
		if (!at) {
			w->lost = 1;
			return 1;
		}
	}
	if (n < 9) {
		// The segment ends inside the header: the next one has the rest.
		__builtin_memcpy(w->hdr, &e->payload[bounded(at, PIECE_ROOM - 1)], 8);
		w->nhdr = n;
		w->pos = w->total;
		return 1;
	}
	h2_frame(w, e, &e->payload[bounded(at, PIECE_ROOM - 1)], pos + 9);
	return 0;
}

// h2_preface tells whether e starts with the client preface.
static __always_inline bool h2_preface(struct event *e)
{
	__u64 *p = (__u64 *)e->payload;
	return p[0] == W8('P', 'R', 'I', ' ', '*', ' ', 'H', 'T') && p[1] == W8('T', 'P', '/', '2', '.', '0', '\r', '\n') &&
	       p[2] == W8('\r', '\n', 'S', 'M', '\r', '\n', '\r', '\n');
}

// h2_plausible tells whether e starts with frames a lost direction may
// take up again at: a valid header of a defined type, with no reserved bit
// and a length within the default maximum, and the same of the next header
// when the prefix holds it, or the segment ends with the first frame.
static __always_inline bool h2_plausible(struct event *e)
{
	__u32 pos = 0;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (pos + 9 > e->captured)
			return i > 0;
		__u8 *h = &e->payload[bounded(pos, MAX_CAPTURE - 1)];
		__u32 len = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
		if (len > H2_RESYNC_FRAME || h[3] > 0x9 || (h[5] & 0x80) || !h2_valid(h))
			return false;
		pos += 9 + len;
		if (pos >= e->len)
			return pos == e->len;
	}
	return true;
}

// h2_follow follows the frames of e, moved in direction dir by syscall nr
// whose buffer argument was buf, on a connection that speaks HTTP/2 (see
// above). Only such a connection, or a segment that may start its
// preface, gets here. What the verifier has to follow per state of
// on_sock_data is kept small: the walk past the prefix is a bpf_loop step
// that finds its state in a map, and the copies a global function. It
// returns H2_QUIET for a segment not to be sent: window updates and pings
// alone, which the agent does not read (the walk's place is unchanged).
static __always_inline int h2_follow(struct sock_state *st, struct event *e, __u8 dir, __u32 nr, __u64 buf)
{
	__u32 start = 0;
	if (!(st->h2 & H2_ON)) {
		if (e->captured < H2_PREFACE || !h2_preface(e))
			return 0;
		st->h2 = H2_ON;
		__builtin_memset(st->h2d, 0, sizeof(st->h2d));
		// The other direction may be anywhere in its frames (a server's
		// 101 and first frames, written before the preface came): it is
		// taken up at its first segment that starts with frames.
		st->h2d[(dir & 1) ^ 1].lost = 1;
		// Neither HTTP/1 requests nor Redis commands on it: the fast path
		// would hold a first byte, which the walk would then not see. A
		// byte held already (a tunnel whose accepted side sends the
		// preface) stays held: the next receive sends it first.
		st->fast = FAST_OFF;
		st->redis = REDIS_OFF;
		start = H2_PREFACE;
	}
	struct h2_dir *d = &st->h2d[dir & 1];
	if (nr == NR_SENDFILE || nr == NR_COUNT_ONLY) {
		// Bytes counted, not read: inside the current frame's payload the
		// walk keeps its place (a DATA frame's body sent from a file);
		// anywhere else it has lost it.
		if (!d->lost && !d->nhdr && e->len <= d->left) {
			d->left -= e->len;
			d->want = d->want > e->len ? d->want - e->len : 0;
		} else {
			d->lost = 1;
		}
		return 0;
	}
	if (d->lost) {
		if (!h2_plausible(e))
			return 0;
		__builtin_memset(d, 0, sizeof(*d));
	}
	// The frames that lie in the prefix (a small segment's all) are
	// stepped over first, on their lengths alone: no walk to set up, no
	// call per frame (a call's return costs more than the rest of a step
	// on CPUs with the SRSO mitigation). A segment whose frames all lie
	// in the prefix and end with it is done with that.
	__u32 pos = start, captured = e->captured;
	bool past = false; // the frame at pos runs past the prefix
	if (!d->nhdr && !d->left) {
		// Not 0 unless every frame is a WINDOW_UPDATE or a PING, which
		// the agent does not read: grpc-go sends them with each call at
		// low rates (its BDP pings), as many segments as the calls' own.
		// Arithmetic, not branches: the verifier then has one state per
		// step, not two.
		__u64 loud = start;
#pragma unroll
		for (int i = 0; i < H2_INLINE_FRAMES; i++) {
			if (pos + 9 > captured)
				break;
			// Not checked (h2_valid) here, for the cost: a walk that
			// is not where it thinks soon meets a frame that runs past
			// the prefix, which h2_frame checks.
			__u8 *h = &e->payload[bounded(pos, MAX_CAPTURE - 1)];
			__u32 end = pos + 9 + ((__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2]);
			if (end > captured) {
				past = true;
				break;
			}
			__u64 window = (h[3] ^ 0x8) | ((end - pos) ^ 13); // 0: a WINDOW_UPDATE
			__u64 ping = (h[3] ^ 0x6) | ((end - pos) ^ 17);   // 0: a PING
			loud |= window * ping;
			pos = end;
		}
		if (pos == e->len) {
			// All of it frames, stepped over: the walk's place is where
			// it was. Such a segment of window updates and pings alone
			// need not go up, unless the connection has sent nothing
			// for a while.
			__u16 now = e->ts_exit >> H2_TICK_SHIFT;
			if (!loud && (__u16)(now - st->h2_sent) < H2_LIVE) {
				count(STAT_H2_QUIET);
				return H2_QUIET;
			}
			st->h2_sent = now;
			return 0;
		}
	}
	st->h2_sent = e->ts_exit >> H2_TICK_SHIFT;
	struct h2_walk *w = bpf_map_lookup_elem(&h2_walks, (const void *)&h2_key);
	if (!w)
		return 0;
	w->buf = buf;
	if ((nr == NR_RECVMSG || nr == NR_SENDMSG) &&
	    bpf_probe_read_user(&w->buf, sizeof(w->buf), &((struct user_msghdr *)buf)->msg_iov)) {
		d->lost = 1;
		return 0;
	}
	w->vectored = nr == NR_READV || nr == NR_WRITEV || nr == NR_RECVMSG || nr == NR_SENDMSG;
	w->total = e->len;
	w->captured = captured;
	w->room = captured;
	w->last = 0;
	w->last_end = 0;
	w->pos = pos;
	w->left = d->left;
	w->want = d->want;
	w->nhdr = d->nhdr;
	w->lost = 0;
	__builtin_memcpy(w->hdr, d->hdr, sizeof(d->hdr));
	if (past)
		h2_frame(w, e, &e->payload[bounded(pos, MAX_CAPTURE - 1)], pos + 9);
	if (w->pos < w->total)
		bpf_loop(H2_MAX_FRAMES, h2_step, 0, 0);
	if (w->pos < w->total)
		w->lost = 1; // more frames than a walk takes, or no room for a header
	d->left = w->left;
	d->want = w->want;
	d->nhdr = w->nhdr;
	d->lost = w->lost;
	__builtin_memcpy(d->hdr, w->hdr, sizeof(d->hdr));
	e->extra = w->room - w->captured;
	return 0;
}

// sock_syscall tells whether nr is a followed syscall that moves bytes in
// direction dir. The others (io_uring, sendmmsg, splice) leave no buffer in
// their registers to copy from: their bytes are counted (NR_COUNT_ONLY).
static __always_inline bool sock_syscall(__u32 nr, __u8 dir)
{
	switch (nr) {
	case NR_READ:
	case NR_READV:
	case NR_RECVFROM:
	case NR_RECVMSG:
		return dir == DIR_INGRESS;
	case NR_WRITE:
	case NR_WRITEV:
	case NR_SENDTO:
	case NR_SENDMSG:
	case NR_SENDFILE:
		return dir == DIR_EGRESS;
	}
	return false;
}

// syscall_sock tells whether the syscall whose registers are regs is the
// one that moved bytes on sk. It is, but for a thread that has used
// io_uring: its completions may run as task work when it leaves another
// syscall, whose registers name another file's buffer. Only then is the
// syscall's file descriptor looked up.
static __always_inline bool syscall_sock(struct task_struct *task, struct pt_regs *regs, struct sock *sk)
{
	if (!bpf_core_field_exists(task->io_uring) || !task->io_uring)
		return true;
	struct socket *so = sk->sk_socket;
	return so && fd_file(regs->di) == so->file;
}

// TLS: the plaintext of OpenSSL's connections.
//
// A process that speaks TLS through OpenSSL (libssl) hands SSL_write its
// plaintext and gets it back from SSL_read; its socket carries records no
// one else can read. The agent puts uprobes on those functions (and
// SSL_do_handshake) in the neighbours that map libssl (bpf/tls.go), for
// their pids alone, so that no other process on the node takes the
// breakpoint. Which connection a call is on comes from the send or
// receive it makes inside: the socket hooks see it while the thread is in
// a probed call (tls_calls) and note its socket with the call; the call's
// return notes it for its SSL object (tls_conns), so that a later call
// that touches no socket (a read of bytes already decrypted) still knows
// its connection. A connection whose bytes start a TLS handshake is
// marked in its socket storage, and its records are not sent up: the
// uprobes' events carry its plaintext instead (EVENT_PLAINTEXT).

// tls_conn is a TLS connection as its events name it.
struct tls_conn {
	__u64 sock;
	__u32 fd;
	__u8 role;
	__u8 fed; // known from a receive before a call (TLS_PAIRED_FED, _TWICE), not from one inside it (0)
	__u16 family;
	__u16 lport;
	__u16 rport;
	__u8 laddr[16];
	__u8 raddr[16];
};

// tls_conn_same tells whether a, if any, is b.
static __always_inline bool tls_conn_same(struct tls_conn *a, struct tls_conn *b)
{
	if (!a)
		return false;
	__u64 *x = (__u64 *)a, *y = (__u64 *)b;
#pragma unroll
	for (int i = 0; i < sizeof(struct tls_conn) / 8; i++)
		if (x[i] != y[i])
			return false;
	return true;
}

// tls_call is a thread's call of SSL_read, SSL_write (or their _ex forms)
// or SSL_do_handshake, from its entry to its return.
struct tls_call {
	__u64 ssl;   // the SSL object
	__u64 buf;   // the plaintext's buffer
	__u64 count; // SSL_read_ex, SSL_write_ex: where the byte count goes (size_t *); 0: the return value
	__u64 sp;    // the stack pointer at the entry: a call or a syscall made below it is inside this one
	__u64 start; // the thread's start time: a tid reused by another thread is not this one
	__u8 dir;    // DIR_INGRESS, DIR_EGRESS, or TLS_HANDSHAKE
	__u8 active; // set at the entry, cleared at the return
	__u8 nested; // conn is the socket a send or receive inside the call used
	// Calls entered inside this one and not yet returned: TLS inside TLS
	// (a client's HTTPS proxy), whose inner layer writes its records with
	// the outer layer's SSL_write. The outermost call's bytes are the
	// plaintext.
	__u8 depth;
	// A library that decrypts from memory (Node.js's TLS, Python's
	// SSLObject) receives the records itself, then calls SSL_read: no
	// socket call is inside its calls. fed is TLS_FED_ONE when the thread
	// received TLS records on one connection (fed_conn, at fed_ns)
	// outside any call since its last call returned; TLS_FED_MANY when
	// it received on more than one, or sent records outside any call
	// (a relay of TLS it does not decrypt): which one its next call is
	// for is not known then.
	__u8 fed;
	__u64 fed_ns;
	struct tls_conn conn;
	struct tls_conn fed_conn;
};

#define TLS_FED_ONE 1
#define TLS_FED_MANY 2

// A tls_conn's fed: paired from a receive before one call, which a later
// read may correct (a receive that no call followed may have misled it);
// or before two calls, on the same connection each time, which stands.
#define TLS_PAIRED_FED 1
#define TLS_PAIRED_FED_TWICE 2

// TLS_FED_NS is how long a receive stays the thread's next call's: a
// library that decrypts from memory calls SSL_read at once (Node.js in
// the same callback; asyncio a few Python lines on, which a thread
// holding the GIL may delay by its switch interval, 5 ms). A receive no
// call followed (a session lookup under way, reading paused) is not
// taken for a later call's.
#define TLS_FED_NS (20 * 1000 * 1000ULL)

// TLS_HANDSHAKE is a tls_call of SSL_do_handshake: nothing moves, but its
// sends and receives tell its SSL object's socket before the first read,
// which may find its request already decrypted (nginx reads ahead, and a
// TLS 1.3 client sends its request with its handshake's end).
#define TLS_HANDSHAKE 2

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); // pid_tgid
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

// tls_pids holds the pod's processes whose libssl (or linked-in OpenSSL)
// has the uprobes, by their PID in the pod: the agent writes and deletes
// them (TraceTLS). Only their threads get a state from a receive before
// their first call (tls_sock_io): others (a Java or Go server's many
// threads) would fill tls_calls for nothing.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} tls_pids SEC(".maps");

// tls_call_zero is a thread's state before its first call, for the
// socket programs to create it from.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tls_call);
} tls_call_zero SEC(".maps");

// tls_probed is set by the agent once it has put uprobes on a TLS library
// (TraceTLS). Until then no thread is in a probed call, and the socket
// programs do not look for one: a pod without a libssl user pays no
// lookup for its connections' first events.
volatile __u32 tls_probed = 0;

struct tls_key {
	__u64 ssl;
	__u32 tgid; // host tgid: the SSL object's address is the process's
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_key);
	__type(value, struct tls_conn);
} tls_conns SEC(".maps");

// tls_hello tells whether e's bytes start a TLS handshake: a handshake
// record (22, version 3.x) whose first message is a ClientHello or a
// ServerHello of legacy version 3.x. Eight bytes of it: no plaintext
// protocol followed here starts a send or a receive with them (an HTTP/2
// frame or a Kafka message that long is beyond their limits).
static __always_inline bool tls_hello(struct event *e)
{
	__u8 *p = e->payload;
	return e->captured >= 11 && p[0] == 22 && p[1] == 3 && p[2] <= 4 && (p[5] == 1 || p[5] == 2) && p[9] == 3 &&
	       p[6] == 0;
}

// TLS_EARLY is how many of a connection's first data events may start
// TLS with a handshake record's header alone (tls_record).
#define TLS_EARLY 4

// tls_record tells whether e's bytes start a TLS record (version 3.x, at
// most 2^14 + 2048 bytes) that begins TLS on a connection of which the
// kernel has seen early data events before: a handshake record among the
// first TLS_EARLY (a server's TLS library reads a record's five-byte
// header alone, and PostgreSQL's and MySQL's connections start TLS after
// a plaintext request for it), or application data first (a connection
// that began before the agent, seen mid-stream). Only there: five bytes
// are too few to tell a record from the plaintext that any other send
// could start with.
static __always_inline bool tls_record(struct event *e, __u8 early)
{
	__u8 *p = e->payload;
	if (e->captured < 5 || p[1] != 3 || p[2] > 4)
		return false;
	if (!(p[0] == 22 && early < TLS_EARLY) && !(p[0] == 23 && early == 0))
		return false;
	// After the first event, a handshake record's header read alone (a
	// server's library reads five bytes first), or a hello.
	if (early > 0 && e->len != 5 && !(e->captured > 5 && (p[5] == 1 || p[5] == 2)))
		return false;
	__u32 n = (__u32)p[3] << 8 | p[4];
	return n > 0 && n <= 18432;
}

// tls_call_of returns the probed call the current thread's syscall (made
// with user stack pointer sp) is inside, if any: one entered by this very
// thread, further up its stack. A call whose return was never seen (the
// thread cancelled in SSL_read, a longjmp) does not hold the thread's
// later syscalls, made from above its frame, nor a new thread's that got
// the same tid.
static __always_inline struct tls_call *tls_call_of(struct task_struct *task, __u64 sp)
{
	if (!tls_probed)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &id);
	if (!call || !call->active || sp >= call->sp || call->start != task->start_time)
		return 0;
	return call;
}

// tls_sock_io notes sk, on which the current thread sends or receives
// TLS records: for the probed call the syscall is inside, if any (a
// library that reads and writes the socket itself: nginx's libssl); else,
// for a receive, for the thread's next call (fed, above).
static __always_inline void tls_sock_io(struct task_struct *task, struct pt_regs *regs, struct sock *sk, __u8 role, __u8 dir, __u32 ns_tgid)
{
	if (!tls_probed)
		return;
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &id);
	if ((!call || call->start != task->start_time) && dir == DIR_INGRESS && bpf_map_lookup_elem(&tls_pids, &ns_tgid)) {
		// A thread of a probed process that made no call since the
		// uprobes went in (or whose tid was another's): its first one
		// may be for this receive. (Its state from a map of zeros: the
		// socket programs have no stack left for it.)
		__u32 zero = 0;
		struct tls_call *fresh = bpf_map_lookup_elem(&tls_call_zero, &zero);
		if (!fresh)
			return;
		bpf_map_update_elem(&tls_calls, &id, fresh, BPF_ANY);
		call = bpf_map_lookup_elem(&tls_calls, &id);
		if (call)
			call->start = task->start_time;
	}
	if (!call || call->start != task->start_time)
		return; // none, or another thread's that had the tid
	struct tls_conn *c;
	if (call->active && regs->sp < call->sp) {
		if (call->nested && call->conn.sock == (__u64)sk)
			return; // noted at the call's last send or receive
		call->nested = 1;
		c = &call->conn;
	} else {
		if (call->fed == TLS_FED_MANY)
			return;
		if (dir != DIR_INGRESS || (call->fed && call->fed_conn.sock != (__u64)sk)) {
			if (call->fed)
				call->fed = TLS_FED_MANY;
			return;
		}
		call->fed_ns = bpf_ktime_get_ns();
		if (call->fed)
			return; // more of the same connection's records
		call->fed = TLS_FED_ONE;
		c = &call->fed_conn;
		c->fed = TLS_PAIRED_FED;
	}
	c->sock = (__u64)sk;
	c->fd = regs->di;
	c->role = role;
	c->family = sock_ends(sk, c->laddr, c->raddr, &c->lport, &c->rport);
}

// tls_in_call tells whether the current thread's syscall is inside a TLS
// library's call (tls_call_of): a send or receive there moves TLS records.
// It finds a connection whose records the kernel could not tell (one older
// than the agent, seen first in the middle of a record) once the uprobes
// are in; asked of a connection's first TLS_EARLY data events only.
static __always_inline bool tls_in_call(struct task_struct *task, struct pt_regs *regs)
{
	return tls_call_of(task, regs->sp) != 0;
}

// tls_enter starts a thread's call of SSL_read, SSL_write or
// SSL_do_handshake, entered with stack pointer sp.
static __always_inline int tls_enter(__u64 ssl, __u64 buf, __u64 count, __u8 dir, __u64 sp)
{
	struct bpf_pidns_info ns;
	if (!in_pod(&ns))
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &id);
	if (!call) {
		struct tls_call fresh = {};
		bpf_map_update_elem(&tls_calls, &id, &fresh, BPF_NOEXIST);
		call = bpf_map_lookup_elem(&tls_calls, &id);
		if (!call)
			return 0;
	}
	__u64 started = BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), start_time);
	if (call->active && sp < call->sp && call->start == started) {
		// Inside the call under way. (At or above its frame instead,
		// that call has ended without its return seen: a longjmp; or
		// the thread that made it is gone.)
		if (call->depth < 255)
			call->depth++;
		return 0;
	}
	if (call->start != started)
		call->fed = 0; // another thread's, which had the same tid
	call->sp = sp;
	call->start = started;
	call->depth = 0;
	call->ssl = ssl;
	call->buf = buf;
	call->count = count;
	call->dir = dir;
	call->nested = 0;
	call->active = 1;
	return 0;
}

// tls_function names the probed functions: the entry program of the
// uprobe_multi links (below) gets it as its cookie. The _EX ones also
// stand for the function that a library's SSL_read and SSL_read_ex (or
// SSL_write and SSL_write_ex) both call, which has the _ex form's
// arguments, where it is probed instead (bpf/sslplaces.go).
enum tls_function {
	TLS_SSL_WRITE = 0,        // int SSL_write(SSL *ssl, const void *buf, int num)
	TLS_SSL_WRITE_EX = 1,     // int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written)
	TLS_SSL_READ = 2,         // int SSL_read(SSL *ssl, void *buf, int num)
	TLS_SSL_READ_EX = 3,      // int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)
	TLS_SSL_DO_HANDSHAKE = 4, // int SSL_do_handshake(SSL *ssl), which SSL_accept and SSL_connect call
	TLS_SSL_FREE = 5,         // void SSL_free(SSL *ssl): at its entry alone
};

// tls_free forgets the connection of an SSL object that its library
// frees: the next connection's object often gets its memory, and must not
// be taken for this one's.
static __always_inline int tls_free(__u64 ssl)
{
	struct tls_key key = {.ssl = ssl, .tgid = bpf_get_current_pid_tgid() >> 32};
	bpf_map_delete_elem(&tls_conns, &key);
	return 0;
}

// tls_entry starts a call of fn, from the registers of its entry.
static __always_inline int tls_entry(struct pt_regs *ctx, __u64 fn)
{
	switch (fn) {
	case TLS_SSL_WRITE:
		return tls_enter(ctx->di, ctx->si, 0, DIR_EGRESS, ctx->sp);
	case TLS_SSL_WRITE_EX:
		return tls_enter(ctx->di, ctx->si, ctx->cx, DIR_EGRESS, ctx->sp);
	case TLS_SSL_READ:
		return tls_enter(ctx->di, ctx->si, 0, DIR_INGRESS, ctx->sp);
	case TLS_SSL_READ_EX:
		return tls_enter(ctx->di, ctx->si, ctx->cx, DIR_INGRESS, ctx->sp);
	case TLS_SSL_DO_HANDSHAKE:
		return tls_enter(ctx->di, 0, 0, TLS_HANDSHAKE, ctx->sp);
	case TLS_SSL_FREE:
		return tls_free(ctx->di);
	}
	return 0;
}

// One program per function where each uprobe is a perf event.
SEC("uprobe")
int tls_write(struct pt_regs *ctx) { return tls_entry(ctx, TLS_SSL_WRITE); }
SEC("uprobe")
int tls_write_ex(struct pt_regs *ctx) { return tls_entry(ctx, TLS_SSL_WRITE_EX); }
SEC("uprobe")
int tls_read(struct pt_regs *ctx) { return tls_entry(ctx, TLS_SSL_READ); }
SEC("uprobe")
int tls_read_ex(struct pt_regs *ctx) { return tls_entry(ctx, TLS_SSL_READ_EX); }
SEC("uprobe")
int tls_handshake(struct pt_regs *ctx) { return tls_entry(ctx, TLS_SSL_DO_HANDSHAKE); }
SEC("uprobe")
int tls_free_entry(struct pt_regs *ctx) { return tls_entry(ctx, TLS_SSL_FREE); }

// TLS_CHUNKS bounds the events an HTTP/2 connection's TLS call goes up
// in, of MAX_CAPTURE bytes each: 32 KB, two full TLS records, or a
// grpc-go write buffer.
#define TLS_CHUNKS 8

// tls_h2 holds the TLS connections whose plaintext is HTTP/2 (by their
// socket): their calls' plaintext goes up whole. A connection's handshake
// takes its socket out (one before it may have had that memory).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u8);
} tls_h2 SEC(".maps");

// tls_h2_frame tells whether e's plaintext starts with an HTTP/2 frame
// of a defined type that it holds whole, as h2_plausible's first (which
// reads past a ring record's room).
static __always_inline bool tls_h2_frame(struct event *e)
{
	__u8 *h = e->payload;
	__u32 len = (__u32)h[0] << 16 | (__u32)h[1] << 8 | h[2];
	return len <= H2_RESYNC_FRAME && h[3] <= 0x9 && !(h[5] & 0x80) && 9 + len <= e->len && h2_valid(h);
}

// tls_emit sends up n bytes of plaintext at buf, moved in direction dir
// on connection c by the current thread, flagged EVENT_PLAINTEXT and
// flags. On an HTTP/2 connection it goes up whole past capture_bytes,
// MAX_CAPTURE bytes an event, as far as TLS_CHUNKS events go (past them,
// the last one counts the rest): a TLS call's plaintext has no walk of
// frames past its prefix (h2_follow keeps its place in the socket's
// storage, out of a uprobe's reach), and a TLS library writes and reads
// at once what several socket calls would move (grpc-go's batched
// frames, a whole record): with the bytes whole the parser follows the
// frames. Other protocols' long calls are bodies, whose prefix is enough.
static __always_inline int tls_emit(struct tls_conn *c, __u8 dir, __u64 buf, __u64 n, __u8 flags)
{
	struct bpf_pidns_info ns;
	if (!in_pod(&ns))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 now = bpf_ktime_get_boot_ns();
	bool wake = first_of_process(ns.tgid);
	bool whole = n > capture_bytes && bpf_map_lookup_elem(&tls_h2, &c->sock);
	if (whole) {
		// Whole only if the ring has room for all of it now: a chunk
		// lost half-way would cut the call short unseen, where its
		// prefix alone leaves the parser a gap it knows of.
		__u64 chunks = n / MAX_CAPTURE + 1;
		if (chunks > TLS_CHUNKS)
			chunks = TLS_CHUNKS;
		__u64 room = bpf_ringbuf_query(&events, BPF_RB_RING_SIZE) - bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
		whole = room > chunks * (EVENT_HEADER_SIZE + MAX_CAPTURE + 8);
	}
	__u64 off = 0;
	for (int i = 0; i < TLS_CHUNKS; i++) {
		// Built in the ring buffer, not in a per-CPU scratch event: a
		// uprobe program runs with migration disabled only, and may be
		// preempted by another task whose program would use the same
		// scratch. The room reserved is a constant at load time: the
		// header and capture_bytes, or MAX_CAPTURE for a call that
		// moved more.
		__u64 left = n - off;
		__u32 room = capture_bytes;
		struct event *e;
		if (left > room && (whole || i == 0)) {
			room = MAX_CAPTURE;
			e = bpf_ringbuf_reserve(&events, EVENT_HEADER_SIZE + MAX_CAPTURE, 0);
		} else {
			if (room > MAX_CAPTURE)
				room = MAX_CAPTURE;
			e = bpf_ringbuf_reserve(&events, EVENT_HEADER_SIZE + room, 0);
		}
		if (!e) {
			count(STAT_LOST);
			return 0;
		}
		__builtin_memset(e, 0, EVENT_HEADER_SIZE);
		e->type = EVENT_DATA;
		e->tgid = ns.tgid;
		e->tid = ns.pid;
		BPF_CORE_READ_INTO(&e->comm, task, group_leader, comm);
		e->sock = c->sock;
		e->fd = c->fd;
		e->role = c->role;
		e->family = c->family;
		e->lport = c->lport;
		e->rport = c->rport;
		__builtin_memcpy(e->laddr, c->laddr, 16);
		__builtin_memcpy(e->raddr, c->raddr, 16);
		// A lost event can only come first, with the plaintext's flags.
		e->flags = EVENT_PLAINTEXT | flags;
		e->dir = dir;
		e->ts_enter = e->ts_exit = now;
		bool last = !whole || left <= room || i == TLS_CHUNKS - 1;
		__u64 len = last ? left : room;
		e->len = len;
		__u32 limit = len < room ? len : room;
		if (limit > 0 && bpf_probe_read_user(e->payload, limit, (void *)(buf + off)))
			limit = 0; // no bytes rather than the ring's old ones
		e->captured = limit;
		// HTTP/2: its preface, or frames (a connection whose preface
		// went before the uprobes came in: a client's connection made at
		// its start, a Go program probed at its first handshake).
		if (i == 0 && !whole && limit >= 9 && ((limit >= H2_PREFACE && h2_preface(e)) || tls_h2_frame(e))) {
			__u8 on = 1;
			bpf_map_update_elem(&tls_h2, &c->sock, &on, BPF_ANY);
		}
		if (len > limit && bpf_probe_read_user(e->tail, TAIL_BYTES, (void *)(buf + off + len - TAIL_BYTES)) == 0)
			e->tail_len = TAIL_BYTES;
		if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > wakeup_bytes)
			wake = true;
		bpf_ringbuf_submit(e, last && wake ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
		count(STAT_EVENTS);
		if (last)
			break;
		off += len;
	}
	return 0;
}

// tls_returned ends a call of any of the five: the socket it sent or
// received on is its SSL object's from now on, and the bytes a read or a
// write moved go up as that connection's, flagged EVENT_PLAINTEXT.
static __always_inline int tls_returned(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *call = bpf_map_lookup_elem(&tls_calls, &id);
	if (!call || !call->active)
		return 0;
	if (call->depth) {
		call->depth--; // a call inside it: its bytes are the outer layer's
		return 0;
	}
	call->active = 0;
	__u8 fed = call->fed;
	call->fed = 0;
	if (fed == TLS_FED_ONE && (__s64)(bpf_ktime_get_ns() - call->fed_ns) > (__s64)TLS_FED_NS)
		fed = 0;
	struct tls_key key = {.ssl = call->ssl, .tgid = id >> 32};
	struct tls_conn *known = bpf_map_lookup_elem(&tls_conns, &key);
	struct tls_conn *c = 0;
	if (call->nested)
		c = &call->conn;
	else if (fed == TLS_FED_ONE && known && known->fed == TLS_PAIRED_FED && known->sock == call->fed_conn.sock)
		// Fed the same connection again: the pairing stands.
		known->fed = TLS_PAIRED_FED_TWICE;
	else if (fed == TLS_FED_ONE && (!known || (known->fed == TLS_PAIRED_FED && call->dir != DIR_EGRESS)))
		// The thread's first call since it received records on one
		// connection alone, outside any call: a library that decrypts
		// from memory goes on with what it was just fed (Node.js writes
		// what waited for the handshake, then reads). An SSL object not
		// known yet takes that connection (one freed before had its
		// pairing forgotten: tls_free). Not over a pairing made from a
		// socket call inside a call, which is sure, nor over one fed
		// twice (asyncio reads a connection whose reading was paused,
		// and resumes, with no receive of its own); over one fed once,
		// by a read, which corrects a pairing that a receive no call
		// followed had misled.
		c = &call->fed_conn;
	// Also when the call failed or wants the socket again (WANT_READ,
	// WANT_WRITE): its socket is known all the same. Written only when
	// it changed (an LRU update replaces the entry's node), all of it:
	// a new connection may get the last one's socket memory and fd.
	if (c && !tls_conn_same(known, c))
		bpf_map_update_elem(&tls_conns, &key, c, BPF_ANY);
	// An int: -1 (SSL_read's "want more") is 0xffffffff in rax, and the
	// internal read probed for SSL_read (sslplaces.go) returns it
	// without SSL_read_ex's clamp to 0, its count of bytes left unset.
	long ret = (int)ctx->ax;
	if (call->dir == TLS_HANDSHAKE || ret <= 0)
		return 0;
	__u64 n = ret;
	if (call->count && bpf_probe_read_user(&n, sizeof(n), (void *)call->count))
		return 0;
	if (n == 0 || n > 0x7fffffff)
		return 0;
	// Without c the map was not written: known is still its entry.
	if (!c && !(c = known)) {
		count(STAT_TLS_LOST);
		return 0;
	}
	return tls_emit(c, call->dir, call->buf, n, 0);
}

SEC("uretprobe")
int tls_return(struct pt_regs *ctx)
{
	return tls_returned(ctx);
}

// The same as one uprobe_multi link of each per library (Linux 6.10+),
// which the agent prefers: a perf event per uprobe and process, as the
// programs above are attached, is the process's, and the kernel schedules
// it in and out at each of its context switches (measured: nginx over
// plain HTTP took 0.8 µs more per request, though it never calls libssl).
// The entry's cookie says which function it is.
SEC("uprobe.multi")
int tls_enter_multi(struct pt_regs *ctx)
{
	return tls_entry(ctx, bpf_get_attach_cookie(ctx));
}

SEC("uretprobe.multi")
int tls_return_multi(struct pt_regs *ctx)
{
	return tls_returned(ctx);
}

// Go's crypto/tls: the plaintext of a Go program's TLS connections.
//
// A Go program links its own TLS (crypto/tls), no libssl. The agent puts
// uprobes on (*tls.Conn).Write's and (*tls.Conn).Read's entries (past
// their stack checks, which start them again when the stack grows) and
// Read's call of runtime.memmove that copies its plaintext out, or where
// it makes none, each of its return instructions (bpf/gotls.go): a call
// is emulated under a breakpoint, a return single-stepped, and a
// uretprobe would put its trampoline's address on a goroutine's stack,
// which Go's runtime copies and unwinds, and a Go program fails on it.
// Arguments and results are in registers (Go's internal ABI, Go 1.17 and
// later, amd64): the receiver in ax, the slice's pointer and length in bx
// and cx, the byte count returned in ax; r14 holds the goroutine (its g).
// A goroutine can park in a call and go on on another thread, so a Read's
// entry and its end are paired by goroutine, not by thread; and its
// connection is read from the tls.Conn itself (not from a send or receive
// inside the call, which a goroutine's other thread may not make).

// The tls.Conn's connection: its conn field (a net.Conn, first in the
// struct) holds a *net.TCPConn as its data word; a TCPConn's first word
// is its *netFD, whose poll.FD starts with a 16-byte fdMutex, then Sysfd.
// The same from Go 1.9 to 1.26.
#define GO_TLS_CONN_DATA 8
#define GO_NETFD_SYSFD 16

struct go_tls_key {
	__u64 g;    // the goroutine (its runtime.g's address)
	__u32 tgid; // host tgid
	__u32 pad;
};

// go_tls_read is a goroutine's call of (*tls.Conn).Read, from its entry to
// its return; or, missed set, the goroutine's read whose return came
// without its entry: it was entered before the uprobes were in (a
// keep-alive connection's goroutine waits in Read), and its bytes are
// lost (conn.sock: the connection told so already, if any).
struct go_tls_read {
	__u64 buf;
	__u8 missed;
	__u8 pad[7];
	struct tls_conn conn;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_tls_key);
	__type(value, struct go_tls_read);
} go_tls_reads SEC(".maps");

// go_tls_conn fills c with the socket under the tls.Conn at conn: the
// file its Sysfd names in the current process, if that is a TCP socket. A
// tls.Conn over something else (a tls.Conn, TLS inside TLS; a user's
// wrapper) finds no socket there, or none of TCP, and is not read.
static __always_inline bool go_tls_conn(__u64 conn, struct tls_conn *c)
{
	__u64 tcp = 0, netfd = 0;
	__s64 fd = -1;
	if (bpf_probe_read_user(&tcp, sizeof(tcp), (void *)(conn + GO_TLS_CONN_DATA)) || !tcp ||
	    bpf_probe_read_user(&netfd, sizeof(netfd), (void *)tcp) || !netfd ||
	    bpf_probe_read_user(&fd, sizeof(fd), (void *)(netfd + GO_NETFD_SYSFD)) || fd < 0 || fd > 0x7fffffff)
		return false;
	struct conn r = {};
	resolve(&r, fd_file(fd));
	if (!r.sock)
		return false;
	c->sock = r.sock;
	c->fd = fd;
	c->role = ROLE_UNKNOWN; // the tracer tells it from who speaks first
	c->family = r.family;
	c->lport = r.lport;
	c->rport = r.rport;
	__builtin_memcpy(c->laddr, r.laddr, 16);
	__builtin_memcpy(c->raddr, r.raddr, 16);
	return true;
}

// go_tls_function names the probed places: the uprobe_multi link's
// program gets it as its cookie.
enum go_tls_function {
	GO_TLS_WRITE = 0,       // (*tls.Conn).Write(b []byte) (int, error), at its entry
	GO_TLS_READ = 1,        // (*tls.Conn).Read(b []byte) (int, error), at its entry
	GO_TLS_READ_RETURN = 2, // and at one of its return instructions
	GO_TLS_READ_COPY = 3,   // or, instead, at its call of runtime.memmove(to, from, n), which copies the plaintext out
};

// go_tls_read_end ends the goroutine's read (key) that got n bytes of
// plaintext, at from, or in the buffer its entry noted (from 0).
static __always_inline int go_tls_read_end(struct go_tls_key *key, long n, __u64 from)
{
	struct go_tls_read *read = bpf_map_lookup_elem(&go_tls_reads, key);
	if (!read || read->missed) {
		if (!read && n > 0) {
			count(STAT_TLS_LOST);
			struct go_tls_read missed = {.missed = 1};
			bpf_map_update_elem(&go_tls_reads, key, &missed, BPF_ANY);
		}
		return 0;
	}
	if (read->conn.sock && n > 0 && n <= 0x7fffffff)
		tls_emit(&read->conn, DIR_INGRESS, from ? from : read->buf, n, 0);
	bpf_map_delete_elem(&go_tls_reads, key);
	return 0;
}

static __always_inline int go_tls(struct pt_regs *ctx, __u64 fn)
{
	struct go_tls_key key = {.g = ctx->r14, .tgid = bpf_get_current_pid_tgid() >> 32};
	struct go_tls_read *read;
	struct tls_conn c;
	long n;
	switch (fn) {
	case GO_TLS_WRITE:
		// Its bytes are known at the entry: one trap, not two.
		n = ctx->cx;
		if (n <= 0 || n > 0x7fffffff)
			return 0;
		if (!go_tls_conn(ctx->ax, &c)) {
			count(STAT_TLS_LOST);
			return 0;
		}
		// After a missed read (below), the goroutine's next write comes
		// first in a server that answers what it read: the marker goes
		// before the answer, not after the next request's first bytes,
		// which net/http reads on another goroutine. The entry stays,
		// with the socket marked: a goroutine that copies one
		// connection to another (a proxy) marks the one it reads too,
		// at its next read.
		read = bpf_map_lookup_elem(&go_tls_reads, &key);
		if (read && read->missed && read->conn.sock != c.sock) {
			tls_emit(&c, DIR_INGRESS, 0, 0, EVENT_LOST);
			read->conn.sock = c.sock;
		}
		return tls_emit(&c, DIR_EGRESS, ctx->bx, n, 0);
	case GO_TLS_READ: {
		struct go_tls_read fresh = {.buf = ctx->bx};
		if (!go_tls_conn(ctx->ax, &fresh.conn)) {
			// Noted all the same (no socket in it), so that its
			// return is not taken for a missed read's.
			count(STAT_TLS_LOST);
			bpf_map_update_elem(&go_tls_reads, &key, &fresh, BPF_ANY);
			return 0;
		}
		// The goroutine's last read was missed: its connection, most
		// likely this one (a goroutine per connection reads it), is
		// told that bytes it received are lost (EVENT_LOST, no bytes),
		// at the goroutine's next read or write, so that its parser
		// does not pair what comes next with the requests those bytes
		// answered.
		read = bpf_map_lookup_elem(&go_tls_reads, &key);
		if (read && read->missed && read->conn.sock != fresh.conn.sock)
			tls_emit(&fresh.conn, DIR_INGRESS, 0, 0, EVENT_LOST);
		bpf_map_update_elem(&go_tls_reads, &key, &fresh, BPF_ANY);
		return 0;
	}
	case GO_TLS_READ_RETURN:
		// The count returned, the plaintext in the caller's buffer.
		return go_tls_read_end(&key, ctx->ax, 0);
	case GO_TLS_READ_COPY:
		// The plaintext about to be copied out: from bx, cx bytes (the
		// call's arguments). A Read makes one such copy, if any.
		return go_tls_read_end(&key, ctx->cx, ctx->bx);
	}
	return 0;
}

// One program per place where each uprobe is a perf event.
SEC("uprobe")
int go_tls_write(struct pt_regs *ctx) { return go_tls(ctx, GO_TLS_WRITE); }
SEC("uprobe")
int go_tls_read(struct pt_regs *ctx) { return go_tls(ctx, GO_TLS_READ); }
SEC("uprobe")
int go_tls_read_return(struct pt_regs *ctx) { return go_tls(ctx, GO_TLS_READ_RETURN); }
SEC("uprobe")
int go_tls_read_copy(struct pt_regs *ctx) { return go_tls(ctx, GO_TLS_READ_COPY); }

// All of them in one uprobe_multi link per program (Linux 6.10+).
SEC("uprobe.multi")
int go_tls_multi(struct pt_regs *ctx)
{
	return go_tls(ctx, bpf_get_attach_cookie(ctx));
}

// on_sock_data reports ret bytes received or sent on sk by the current
// task. The syscall that moved them, and its buffer, are in the registers
// the task saved on entry.
static __always_inline int on_sock_data(struct sock *sk, int ret, __u8 dir, bool count_only)
{
	if (!tcp_sock(sk))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct bpf_pidns_info ns;
	if (!in_pod_btf(task, &ns) || !user_sock(sk))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	__u32 nr = regs->orig_ax;
	// An io_uring worker's registers are zeros (a read of nothing), and the
	// bytes of a syscall not followed are in no buffer of its registers:
	// either way they are counted, not read. Without them user space
	// would see a stream with bytes missing and not know it.
	if (count_only || (task->flags & PF_IO_WORKER) || !sock_syscall(nr, dir) || !syscall_sock(task, regs, sk))
		nr = NR_COUNT_ONLY;

	struct sock_state *st = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	__u8 role = ROLE_UNKNOWN;
	if (st) {
		if (!st->tgid)
			st->tgid = ns.tgid;
		role = st->role;
		if (st->tls) {
			// A TLS record: its plaintext goes up from the library.
			count(STAT_TLS_RECORDS);
			tls_sock_io(task, regs, sk, role, dir, ns.tgid);
			return 0;
		}
		if (fast_http && dir == DIR_EGRESS && (st->fast & (FAST_OWN | FAST_RESP | FAST_HANDOFF)) == (FAST_OWN | FAST_RESP)) {
			// More of a skipped response: nothing to read.
			fast_extend(st, bpf_ktime_get_boot_ns());
			return 0;
		}
	}
	if (fast_redis && st && dir == DIR_EGRESS && (st->redis & REDIS_SKIP)) {
		// The reply of a dropped command: nothing to read.
		st->redis = (st->redis & ~REDIS_OPEN) | REDIS_REPLIED | (send_open(nr, regs, ret) ? REDIS_OPEN : 0);
		return 0;
	}
	struct event *e = scratch_event(SCRATCH_TASK, ns.tgid, ns.pid, EVENT_DATA);
	if (!e)
		return 0;
	e->ts_enter = e->ts_exit = bpf_ktime_get_boot_ns();
	e->fd = regs->di;
	e->len = ret;
	// The response to a request the kernel owns needs its head only, to
	// tell its status and whether it is whole, and nginx writes the head
	// and the body in two vectors: the body's probe read waits until the
	// response turns out to go up after all.
	bool head_only = fast_http && st && nr == NR_WRITEV && dir == DIR_EGRESS && regs->dx == 2 &&
			 (st->fast & (FAST_OWN | FAST_RESP | FAST_HANDOFF)) == FAST_OWN && !holding_byte(st);
	e->dir = dir;
	if (!copy_payload(e, nr, regs->si, head_only ? 1 : regs->dx, ret))
		return 0;
	if (head_only && e->captured < 12) {
		// Not even a status line in the first vector (an empty one, a
		// line split): all of it, as for any other send.
		e->captured = copy_iov(regs->si, regs->dx, ret);
		head_only = false;
	}
	__u8 early = TLS_EARLY;
	if (st && (early = st->early) < TLS_EARLY)
		st->early = early + 1;
	if (st && (tls_hello(e) || tls_record(e, early) || (early < TLS_EARLY && tls_in_call(task, regs)))) {
		// A TLS handshake: this connection's records stay here from
		// now on. User space hears of it once, so that it puts the
		// uprobes on the process's TLS library if it has not yet.
		st->tls = 1;
		__u64 key = (__u64)sk;
		bpf_map_delete_elem(&tls_h2, &key);
		count(STAT_TLS_RECORDS);
		tls_sock_io(task, regs, sk, role, dir, ns.tgid);
		e->type = EVENT_TLS;
		e->captured = 0;
		e->tail_len = 0;
		sock_fill(e, task, sk, role);
		submit_waking(e, first_of_process(ns.tgid));
		return 0;
	}
	int verdict = FAST_SEND;
	if (fast_http && st) {
		verdict = fast_skip(sk, st, e, dir);
		if (fast_redis && verdict != FAST_SEND)
			st->redis = REDIS_OFF; // an HTTP connection: no RESP command of it is the Redis side's
		if (verdict == FAST_SKIP)
			return 0;
		if (head_only && verdict != FAST_SEND_SPAN)
			e->captured = copy_iov(regs->si, regs->dx, ret); // and its tail
	}
	bool redis = false; // the verdict is the Redis side's
	if (fast_redis && st && verdict == FAST_SEND) {
		verdict = redis_skip(sk, st, e, dir, nr, regs);
		if (verdict == FAST_SKIP)
			return 0;
		redis = true;
	}
	if (h2_frames && st && verdict == FAST_SEND &&
	    ((st->h2 & H2_ON) || (e->captured >= H2_PREFACE && *(__u64 *)e->payload == W8('P', 'R', 'I', ' ', '*', ' ', 'H', 'T'))) &&
	    h2_follow(st, e, dir, nr, regs->si) == H2_QUIET)
		return 0;
	sock_fill(e, task, sk, role);
	if ((fast_http || fast_redis) && st) {
		// The owned request first, then the held byte (which came after it).
		if (verdict == FAST_SEND_REQUEST || verdict == FAST_SEND_REQUEST_HELD)
			submit_first(e, st, redis ? EVENT_REDIS_REQUEST : EVENT_HTTP_REQUEST);
		if (verdict == FAST_SEND_HELD || verdict == FAST_SEND_REQUEST_HELD)
			submit_first(e, st, EVENT_DATA);
		else if (verdict == FAST_SEND_SPAN) {
			// The exchange's record: from the request to this send.
			e->type = redis ? EVENT_REDIS : EVENT_HTTP;
			e->captured = 0;
			e->tail_len = 0;
			e->ts_enter = st->req_ns;
			e->trace_low = st->trace_low;
			e->head_hash = st->head;
			if (st->has_parent) {
				__builtin_memcpy(e->payload, st->parent, TRACEPARENT_VALUE + 1);
				e->captured = TRACEPARENT_VALUE;
			}
		}
	}
	bool wake = false;
	if (st && !st->announced) {
		st->announced = 1;
		wake = first_of_process(ns.tgid);
	}
	submit_waking(e, wake);
	return 0;
}

// send_close reports the end of sk's connection to user space, with what
// the kernel held of it first, in the scratch event of slot: a program
// that a softirq's may interrupt on the CPU must not use that one's.
static __always_inline void send_close(struct sock *sk, struct sock_state *st, __u32 slot)
{
	st->closed = 1;
	struct event *e = scratch_event(slot, st->tgid, 0, EVENT_CLOSE);
	if (!e)
		return;
	sock_fill(e, 0, sk, st->role);
	e->ts_enter = e->ts_exit = bpf_ktime_get_boot_ns();
	bool held = holding_byte(st);
	if (fast_http && (st->fast & (FAST_OWN | FAST_SPAN)) == (FAST_OWN | FAST_SPAN)) {
		// A request owned for a span and closed before its response.
		st->fast = FAST_OFF;
		submit_first(e, st, EVENT_HTTP_REQUEST);
	}
	if (fast_http && held) {
		// A first byte held for a request that never came (after the
		// owned one's, which came first): user space gets it before
		// the close, as it came.
		drop_byte(st);
		submit_first(e, st, EVENT_DATA);
	}
	if (fast_redis && (st->redis & REDIS_SPAN)) {
		// A command owned for a span and closed before its reply.
		st->redis = REDIS_OFF;
		submit_first(e, st, EVENT_REDIS_REQUEST);
	}
	submit(e);
}

// late_close sends the close of a connection that ended with bytes still
// to read (inet_sock_set_state), if it was held back: when a read of it
// finds nothing (they have all been read, and their events went up
// before), in the scratch event of slot; tcp_destroy_sock sends it when
// the socket goes.
static __always_inline void late_close(struct sock *sk, __u32 slot)
{
	struct sock_state *st = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!st || !st->close_late || st->closed)
		return;
	st->close_late = 0;
	send_close(sk, st, slot);
}

SEC("tp_btf/sock_recv_length")
int sock_recv_length(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int ret = ctx[1];
	int flags = ctx[2];
	if (ret <= 0) {
		// Failed and empty reads carry nothing; on a connection that has
		// ended (one state load for the node's other reads) such a read
		// is what a held-back close waits for.
		if (sk->__sk_common.skc_state == TCP_CLOSE)
			late_close(sk, SCRATCH_TASK); // the program's own: a task's read
		return 0;
	}
	// Nor do reads whose bytes are not the stream's next (NOT_STREAM).
	if (flags & NOT_STREAM)
		return 0;
	return on_sock_data(sk, ret, DIR_INGRESS, flags & MSG_TRUNC);
}

SEC("tp_btf/sock_send_length")
int sock_send_length(__u64 *ctx)
{
	int ret = ctx[1];
	if (ret <= 0)
		return 0;
	return on_sock_data((struct sock *)ctx[0], ret, DIR_EGRESS, false);
}

// tcp_destroy_sock sends the close held back for a connection whose
// process closed its socket without a read that found nothing left, and
// the close that inet_sock_set_state missed: the kernel skips a program's
// run on a CPU where the same program is running (a softirq's state
// change inside a task's connect or close). A socket goes once, after its
// end, so no close goes up twice.
SEC("tp_btf/tcp_destroy_sock")
int tcp_destroy_sock(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	struct sock_state *st = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!st || st->closed || !st->tgid)
		return 0;
	st->close_late = 0;
	send_close(sk, st, SCRATCH_DESTROY);
	return 0;
}

// sched_process_exec tells the agent at once that a neighbour started a
// program, so that it can put the uprobes on the program's TLS before its
// first connection rather than after (a Go program's crypto/tls is in its
// executable; libssl is mapped by the dynamic loader a moment later). A
// native sidecar starts before the application, so every program of the
// pod's starts after the agent. It wakes the reader: an exec costs far
// more than the wake-up.
SEC("tp_btf/sched_process_exec")
int sched_process_exec(__u64 *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx[0];
	struct bpf_pidns_info ns;
	if (!in_pod_btf(task, &ns))
		return 0;
	struct event *e = event_base(ns.tgid, ns.pid, EVENT_EXEC);
	if (!e)
		return 0;
	e->sock = 0;
	e->dir = 0;
	e->role = ROLE_UNKNOWN;
	e->family = 0;
	e->lport = e->rport = 0;
	__builtin_memset(e->laddr, 0, 16);
	__builtin_memset(e->raddr, 0, 16);
	e->ts_enter = e->ts_exit = bpf_ktime_get_boot_ns();
	submit_waking(e, true);
	return 0;
}

// inet_sock_set_state marks the connections the pod's processes open
// (SYN_SENT happens in the connecting task) and reports the end of the
// pod's connections: LAST_ACK (both sides closed) or CLOSE. It fires a few
// times per connection, not per byte, and often in softirq context, where
// the current task is nobody in particular: the socket's storage says whose
// it is.
SEC("tp_btf/inet_sock_set_state")
int inet_sock_set_state(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int newstate = ctx[2];
	if (newstate != TCP_SYN_SENT && newstate != TCP_CLOSE && newstate != TCP_LAST_ACK)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		struct bpf_pidns_info ns;
		if (!in_pod_btf(bpf_get_current_task_btf(), &ns))
			return 0;
		struct sock_state *st = bpf_sk_storage_get(&socks, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (st) {
			// A new connection, also on a socket that connected before (a
			// refused connect, then another; a disconnect with AF_UNSPEC):
			// nothing of the last one's holds for it.
			__builtin_memset(st, 0, sizeof(*st));
			st->tgid = ns.tgid;
			st->role = ROLE_CLIENT;
		}
		return 0;
	}
	struct sock_state *st = bpf_sk_storage_get(&socks, sk, 0, 0);
	if (!st || st->closed || !st->tgid)
		return 0;
	if (newstate == TCP_CLOSE && sk->sk_receive_queue.qlen && user_sock(sk)) {
		// Ended (a reset after the response, the peer's FIN after our
		// shutdown) with bytes the process has yet to read: user space
		// would forget the connection before they come. The close goes
		// up when a read finds nothing left (late_close), or when the
		// socket goes (tcp_destroy_sock). A close(2) with bytes unread
		// empties the queue first: its close goes at once.
		st->close_late = 1;
		return 0;
	}
	send_close(sk, st, SCRATCH_STATE);
	return 0;
}
