/*
 * floor.c: the least an HTTP/1.1 server or proxy can do per answer on this machine, as a
 * reference for the end-to-end figures (benches/e2e/README.md). Neither is a real
 * server: no quota, no key, no route, no header, no allocation after start.
 *
 * - Refusing (no backend given): it never parses a request. It counts the ends of request heads
 *   ("\r\n\r\n") in what one recv returns and sends that many copies of billgate's own 429
 *   answer (the same bytes, Date fixed) in one send.
 * - Relaying (a backend given): each partner connection gets its own connection to the backend,
 *   made when the partner connects, and bytes go through both ways as they come: one recv and
 *   one send per direction, as a keep-alive proxy needs at least. Nothing is parsed, so it
 *   relies on each message arriving whole in one recv (small messages on loopback do), and it
 *   closes both connections if a send falls short.
 *
 * Each worker thread has its own SO_REUSEPORT listener and its own epoll, edge-triggered as
 * tokio's and nginx's are, as nginx's workers and billgate's per-core runtimes do. Per answer
 * it makes the system calls a keep-alive answer needs at least: one recv and one send, plus its
 * share of epoll_wait. A recv that fills the buffer is followed by another; one that returns
 * less is taken to have drained the socket, as tokio does (a later arrival raises a new edge).
 *
 *   cc -O2 -pthread -o /tmp/floor benches/e2e/floor.c
 *   /tmp/floor 127.0.0.1 18011 2                    # refusing: address, port, workers
 *   /tmp/floor 127.0.0.1 18013 2 127.0.0.1 18000    # relaying to the backend
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char ANSWER[] =
    "HTTP/1.1 429 Too Many Requests\r\n"
    "content-type: application/problem+json\r\n"
    "retry-after: 1\r\n"
    "ratelimit-policy: \"inquiry_scheduled\";q=10;w=1\r\n"
    "ratelimit: \"inquiry_scheduled\";r=0;t=1\r\n"
    "content-length: 278\r\n"
    "date: Tue, 01 Dec 2026 02:03:38 GMT\r\n"
    "\r\n"
    "{\"type\":\"urn:billgate:problem:partner_quota\",\"title\":\"Partner quota exceeded\","
    "\"status\":429,\"detail\":\"bench-tiny sent more inquiry_scheduled requests than its quota "
    "of 10/s; retry in 1s\",\"partner\":\"bench-tiny\",\"class\":\"inquiry_scheduled\","
    "\"reason\":\"partner_quota\",\"retry_after\":1}";

#define MAX_PIPELINE 16
#define MAX_FD 65536

static struct sockaddr_in addr, backend;
static int relaying;
/* In relay mode, the other end of each connection: partner <-> backend. */
static int peer[MAX_FD];

static int listener(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 4096) < 0) {
        perror("bind/listen");
        return -1;
    }
    return fd;
}

/* How many request heads end in buf[0..n), counting a "\r\n\r\n" that began in the previous
 * read through *tail (the bytes matched so far). */
static int heads(const char *buf, ssize_t n, int *tail) {
    static const char end[] = "\r\n\r\n";
    int count = 0, t = *tail;
    for (ssize_t i = 0; i < n; i++) {
        if (buf[i] == end[t]) {
            if (++t == 4) { count++; t = 0; }
        } else {
            t = buf[i] == '\r' ? 1 : 0;
        }
    }
    *tail = t;
    return count;
}

/* Makes a connection to the backend for partner connection c; -1 if it cannot. */
static int to_backend(int c) {
    int u = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (u < 0) return -1;
    if (u >= MAX_FD || connect(u, (struct sockaddr *)&backend, sizeof backend) < 0) {
        close(u);
        return -1;
    }
    setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(u, F_SETFL, O_NONBLOCK);
    peer[c] = u;
    peer[u] = c;
    return u;
}

/* Relay mode: what fd has goes to its peer. */
static void relay(int fd, char *buf, size_t size) {
    for (;;) {
        ssize_t got = recv(fd, buf, size, 0);
        if (got < 0 && errno == EAGAIN) return;
        if (got <= 0 || send(peer[fd], buf, (size_t)got, MSG_NOSIGNAL) != got) {
            close(peer[fd]);
            close(fd);
            return;
        }
        if ((size_t)got < size) return;
    }
}

static void *worker(void *unused) {
    (void)unused;
    static __thread char out[MAX_PIPELINE * sizeof ANSWER];
    static __thread int tails[MAX_FD];
    char buf[8192];
    int lfd = listener(), ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, events[256];
    if (lfd < 0 || ep < 0) exit(1);
    for (int i = 0; i < MAX_PIPELINE; i++)
        memcpy(out + i * (sizeof ANSWER - 1), ANSWER, sizeof ANSWER - 1);
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    int one = 1;
                    if (c >= MAX_FD) { close(c); continue; }
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    tails[c] = 0;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLET, .data.fd = c};
                    if (relaying) {
                        int u = to_backend(c);
                        if (u < 0) { close(c); continue; }
                        struct epoll_event uev = {.events = EPOLLIN | EPOLLET, .data.fd = u};
                        epoll_ctl(ep, EPOLL_CTL_ADD, u, &uev);
                    }
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            if (relaying) {
                relay(fd, buf, sizeof buf);
                continue;
            }
            for (;;) {
                ssize_t got = recv(fd, buf, sizeof buf, 0);
                if (got <= 0) {
                    if (got < 0 && errno == EAGAIN) break;
                    close(fd); /* also leaves the epoll set */
                    break;
                }
                int k = heads(buf, got, &tails[fd]);
                if (k > MAX_PIPELINE) k = MAX_PIPELINE;
                if (k > 0 && send(fd, out, (size_t)k * (sizeof ANSWER - 1), MSG_NOSIGNAL) < 0) {
                    close(fd);
                    break;
                }
                if ((size_t)got < sizeof buf) break;
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 6) {
        fprintf(stderr, "usage: %s ADDRESS PORT WORKERS [BACKEND_ADDRESS BACKEND_PORT]\n", argv[0]);
        return 2;
    }
    if (argc == 6) {
        relaying = 1;
        backend.sin_family = AF_INET;
        backend.sin_port = htons((unsigned short)atoi(argv[5]));
        if (inet_pton(AF_INET, argv[4], &backend.sin_addr) != 1) return 2;
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) return 2;
    int workers = atoi(argv[3]);
    pthread_t threads[64];
    if (workers < 1 || workers > 64) return 2;
    for (int i = 0; i < workers; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < workers; i++) pthread_join(threads[i], NULL);
    return 0;
}
