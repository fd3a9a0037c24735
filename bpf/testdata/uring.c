// uring moves bytes over a loopback TCP connection with io_uring, for
// TestCountedBytes: a send done inline in io_uring_enter; a send forced to
// an io_uring worker thread (IOSQE_ASYNC), whose registers are zeros; and
// a receive that completes as task work while the thread is blocked in a
// read(2) of a pipe, whose registers name the pipe's buffer. The other
// side uses read(2) and write(2). It prints what the server read and what
// the receive got, or "no io_uring" where it is disabled.
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int uring_send(struct io_uring *ring, int fd, const char *msg, unsigned flags)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	io_uring_prep_send(sqe, fd, msg, strlen(msg), 0);
	sqe->flags |= flags;
	io_uring_submit(ring);
	struct io_uring_cqe *cqe;
	if (io_uring_wait_cqe(ring, &cqe) < 0)
		return -1;
	int res = cqe->res;
	io_uring_cqe_seen(ring, cqe);
	return res;
}

static int peer, pipe_w;

// later sends the receive's bytes, then ends the read of the pipe.
static void *later(void *arg)
{
	(void)arg;
	usleep(100 * 1000);
	if (write(peer, "URING-TASKWORK", 14) != 14)
		perror("write");
	usleep(100 * 1000);
	if (write(pipe_w, "x", 1) != 1)
		perror("write pipe");
	return 0;
}

int main(void)
{
	int srv = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(addr);
	if (bind(srv, (struct sockaddr *)&addr, sizeof(addr)) || listen(srv, 1) ||
	    getsockname(srv, (struct sockaddr *)&addr, &alen))
		return perror("listen"), 1;
	int c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (struct sockaddr *)&addr, sizeof(addr)))
		return perror("connect"), 1;
	int a = accept(srv, 0, 0);
	struct io_uring ring;
	if (io_uring_queue_init(4, &ring, 0))
		return printf("no io_uring\n"), 0; // disabled: sysctl, seccomp
	char got[64] = {0};
	int n = 0;
	const char *msgs[] = {"URING-INLINE", "URING-WORKER"};
	for (int i = 0; i < 2; i++) {
		if (uring_send(&ring, c, msgs[i], i ? IOSQE_ASYNC : 0) != (int)strlen(msgs[i]))
			return fprintf(stderr, "send %s failed\n", msgs[i]), 1;
		int r = read(a, got + n, strlen(msgs[i]));
		if (r > 0)
			n += r;
	}

	// The receive waits for its bytes; they come while this thread reads
	// the pipe, into a buffer that holds other bytes.
	char recv_buf[32] = {0};
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	io_uring_prep_recv(sqe, a, recv_buf, sizeof(recv_buf) - 1, 0);
	io_uring_submit(&ring);
	int p[2];
	if (pipe(p))
		return perror("pipe"), 1;
	pipe_w = p[1];
	peer = c;
	pthread_t th;
	pthread_create(&th, 0, later, 0);
	char pipe_buf[32] = "STALE-PIPE-BYTES";
	if (read(p[0], pipe_buf, sizeof(pipe_buf)) != 1)
		return perror("read pipe"), 1;
	pthread_join(th, 0);
	struct io_uring_cqe *cqe;
	if (io_uring_wait_cqe(&ring, &cqe) < 0 || cqe->res != 14)
		return fprintf(stderr, "recv failed\n"), 1;
	printf("%s %s\n", got, recv_buf);
	return 0;
}
