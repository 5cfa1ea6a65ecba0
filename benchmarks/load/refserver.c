/*
 * refserver: a trivial socketmap server that answers every netstring request
 * with one fixed reply. It exists to measure the load generator's own ceiling:
 * whatever rate loadgen reaches against refserver on the same machine is the
 * most any real daemon can be shown to reach.
 *
 *   refserver [-r REPLY] [-t SECONDS] ADDRESS
 *
 * ADDRESS is HOST:PORT (IPv4), [HOST]:PORT (IPv6) or unix:/path. REPLY is the
 * reply payload, netstring-framed by refserver (default "NOTFOUND "). The
 * server prints "ready" on stdout once it listens and exits after SECONDS
 * (default 3600) or on SIGTERM/SIGINT. Single thread, level-triggered epoll,
 * no per-request allocation.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define IN_SIZE 16384
#define OUT_SIZE 65536
#define MAX_EVENTS 256
#define MAX_REQUEST 10000 /* Postfix never sends more (dict_sockmap.c) */

struct conn {
    int fd;
    size_t in_len;
    size_t out_off, out_len;
    int want_out;
    char in[IN_SIZE];
    char out[OUT_SIZE];
};

static volatile sig_atomic_t stop_flag;
static char *reply; /* framed */
static size_t reply_len;
static struct conn **conns; /* indexed by fd */
static int max_fd;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int listen_on(const char *address)
{
    int fd;
    if (strncmp(address, "unix:", 5) == 0) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        const char *path = address + 5;
        if (strlen(path) >= sizeof(sun.sun_path)) {
            fprintf(stderr, "refserver: socket path too long\n");
            exit(2);
        }
        strcpy(sun.sun_path, path);
        unlink(path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket");
        if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) die("bind");
    } else {
        char host[256];
        const char *colon = strrchr(address, ':');
        if (!colon || (size_t)(colon - address) >= sizeof(host)) {
            fprintf(stderr, "refserver: address must be HOST:PORT or unix:/path\n");
            exit(2);
        }
        memcpy(host, address, colon - address);
        host[colon - address] = 0;
        char *h = host;
        if (h[0] == '[') { h++; h[strlen(h) - 1] = 0; }
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *ai;
        int rc = getaddrinfo(h, colon + 1, &hints, &ai);
        if (rc) {
            fprintf(stderr, "refserver: %s: %s\n", address, gai_strerror(rc));
            exit(2);
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) die("socket");
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) die("bind");
        freeaddrinfo(ai);
    }
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

static void drop(int ep, struct conn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    conns[c->fd] = NULL;
    free(c);
}

/* Answer every complete netstring in c->in; return -1 on a framing error. */
static int parse(struct conn *c)
{
    size_t pos = 0;
    for (;;) {
        size_t len = 0, i = pos;
        int digits = 0;
        while (i < c->in_len && c->in[i] >= '0' && c->in[i] <= '9') {
            len = len * 10 + (size_t)(c->in[i] - '0');
            if (++digits > 5 || len > MAX_REQUEST) return -1;
            i++;
        }
        if (i == c->in_len) break; /* length still arriving */
        if (c->in[i] != ':' || digits == 0) return -1;
        if (c->in_len - i - 1 < len + 1) break; /* payload still arriving */
        if (c->in[i + 1 + len] != ',') return -1;
        if (c->out_len + reply_len > OUT_SIZE) break; /* resume after a write */
        memcpy(c->out + c->out_len, reply, reply_len);
        c->out_len += reply_len;
        pos = i + 2 + len;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return 0;
}

static int flush(int ep, struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) break;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    int want = c->out_len > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.fd = c->fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *payload = "NOTFOUND ";
    double lifetime = 3600;
    int opt;
    while ((opt = getopt(argc, argv, "r:t:")) != -1) {
        if (opt == 'r') payload = optarg;
        else if (opt == 't') lifetime = atof(optarg);
        else {
            fprintf(stderr, "usage: refserver [-r REPLY] [-t SECONDS] HOST:PORT|unix:/path\n");
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: refserver [-r REPLY] [-t SECONDS] HOST:PORT|unix:/path\n");
        return 2;
    }
    size_t plen = strlen(payload);
    reply = malloc(plen + 32);
    reply_len = (size_t)sprintf(reply, "%zu:", plen);
    memcpy(reply + reply_len, payload, plen);
    reply_len += plen;
    reply[reply_len++] = ',';

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    max_fd = (int)(rl.rlim_cur > 1048576 ? 1048576 : rl.rlim_cur);
    conns = calloc((size_t)max_fd, sizeof(*conns));

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    int lfd = listen_on(argv[optind]);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    printf("ready\n");
    fflush(stdout);

    double deadline = now_s() + lifetime;
    struct epoll_event events[MAX_EVENTS];
    while (!stop_flag && now_s() < deadline) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 200);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (int k = 0; k < 64; k++) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) break;
                    if (cfd >= max_fd) { close(cfd); continue; }
                    int one = 1;
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct conn *c = malloc(sizeof(*c));
                    c->fd = cfd;
                    c->in_len = c->out_off = c->out_len = 0;
                    c->want_out = 0;
                    conns[cfd] = c;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            struct conn *c = conns[fd];
            if (!c) continue;
            if (events[i].events & EPOLLOUT) {
                /* Requests left unanswered while the output was full go now. */
                if (flush(ep, c) < 0 || parse(c) < 0 || flush(ep, c) < 0) {
                    drop(ep, c);
                    continue;
                }
            }
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (c->in_len == IN_SIZE) { drop(ep, c); continue; }
                ssize_t r = recv(fd, c->in + c->in_len, IN_SIZE - c->in_len, 0);
                if (r == 0 || (r < 0 && errno != EAGAIN)) { drop(ep, c); continue; }
                if (r > 0) {
                    c->in_len += (size_t)r;
                    if (parse(c) < 0 || flush(ep, c) < 0) { drop(ep, c); continue; }
                }
            }
        }
    }
    if (strncmp(argv[optind], "unix:", 5) == 0) unlink(argv[optind] + 5);
    return 0;
}
