// uring sends over a loopback TCP connection with io_uring, for
// TestCountedBytes: one send done inline in io_uring_enter, one forced to
// an io_uring worker thread (IOSQE_ASYNC), whose registers are zeros. The
// server side reads them with read(2). It prints what the server read.
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
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
		return perror("io_uring_queue_init"), 1;
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
	printf("%s\n", got);
	return 0;
}
