/*
 * loadgen: closed-loop load generator for socketmap servers (Postfix's
 * smtp_tls_policy_maps protocol).
 *
 * Every connection behaves like one Postfix smtp(8) process: it sends one
 * netstring request, waits for the whole reply, checks it, and only then sends
 * the next one. Keys come from a file and are taken round-robin by all
 * connections. One thread and one epoll set, so the generator's own cost is a
 * single core; run it against `refserver` to know that ceiling.
 *
 *   loadgen [options] HOST:PORT | [HOST6]:PORT | unix:/path
 *
 *   -c N             connections (default 16)
 *   -d SECONDS       measured window (default 5)
 *   -w SECONDS       warm-up before the window (default 1); the window starts
 *                    only once every connection has had one reply
 *   -W SECONDS       give up waiting for that after this long (default 15);
 *                    the same bound applies to opening the connections: in
 *                    batches of 64, each connection answering one request
 *                    before the next batch opens, all before the warm-up
 *   -D SECONDS       after the window, wait this long for owed replies (default 3)
 *   -k FILE          keys: one "domain" or "domain<TAB>expected reply" per line
 *   -m NAME          socketmap name sent before each key (default "postfix")
 *   -e REPLY         expected reply payload for every key (overrides the file)
 *   -s               compare the match= list of "OK secure match=a:b ..."
 *                    replies as a set (postfix-mta-sts-resolver's order is a
 *                    Python set's); everything else must still be identical
 *   -n               accept "NOTFOUND " as well (counted apart)
 *   -P PID           report that process's CPU time (with its descendants,
 *                    from /proc/PID/stat utime+stime) over the window
 *   -l LABEL         copied into the report
 *
 * Output: one JSON object on one line (stdout). Exit status 0 when the run
 * completed (errors are in the report), 2 on bad usage.
 *
 * Definitions used in the report:
 *   requests, rps      replies received inside the window / window length
 *   latency_us         send-to-reply time of the requests *sent* inside the
 *                      window (their replies may arrive during the drain);
 *                      log-linear histogram, <= 1.6 % relative error
 *   errors             every failed check, at any time: mismatch, protocol
 *                      (bad netstring, unsolicited bytes, reply too large),
 *                      closed (server closed or reset), connect, stalled (no
 *                      reply before the window could start)
 *   lost               requests never answered: outstanding when a connection
 *                      closed, or still outstanding at the end of the drain
 *   server_cpu_*       utime+stime of -P PID and its descendants over the window
 *   client_cpu_*       loadgen's own CPU time over the window (util 1.0 = saturated)
 *   core_busy          fraction of each core busy over the window (/proc/stat),
 *                      whoever used it: shows other load on a shared machine
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define IN_SIZE 16384
#define MAX_EVENTS 512
#define N_BUCKETS 2560
#define MAX_SAMPLES 3
#define CONNECT_BATCH 64 /* below the 100 of asyncio's default listen backlog */

enum state { ST_RETRY, ST_CONNECTING, ST_IDLE, ST_WAIT, ST_DEAD };
enum phase { PH_CONNECT, PH_WARMUP, PH_WINDOW, PH_DRAIN, PH_DONE };
enum errkind { E_MISMATCH, E_PROTOCOL, E_CLOSED, E_CONNECT, E_STALLED, E_KINDS };
static const char *const errnames[E_KINDS] = {"mismatch", "protocol", "closed", "connect",
                                              "stalled"};

struct key {
    const char *domain;
    char *req;
    size_t req_len;
    const char *exp; /* NULL: any well-formed reply */
    size_t exp_len;
};

struct conn {
    int fd;
    enum state state;
    int want_out;
    int in_window; /* the outstanding request was sent inside the window */
    uint64_t replies;
    uint64_t sent_ns;
    size_t key;
    size_t out_off;
    size_t in_len;
    char in[IN_SIZE];
};

/* options */
static int n_conns = 16;
static double window_s = 5, warmup_s = 1, max_warmup_s = 15, drain_s = 3;
static const char *keys_path, *map_name = "postfix", *expect_all, *label = "";
static int set_match, allow_notfound;
static long server_pid;

static struct key *keys;
static size_t n_keys, next_key;
static struct conn *conns;
static int ep;
static enum phase phase = PH_CONNECT;
static struct sockaddr_storage addr;
static socklen_t addr_len;
static int is_unix;

/* results */
static uint64_t hist[N_BUCKETS], lat_count, lat_sum_ns, lat_max_ns;
static uint64_t window_replies, notfound_replies, errors[E_KINDS], lost;
static char samples[MAX_SAMPLES][256];
static int n_samples;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen [-c N] [-d S] [-w S] [-W S] [-D S] -k FILE [-m NAME] [-e REPLY]\n"
            "               [-s] [-n] [-P PID] [-l LABEL] HOST:PORT|unix:/path\n");
    exit(2);
}

/* -- latency histogram: 128 linear buckets, then 64 per power of two -------- */

static inline int bucket_of(uint64_t v)
{
    if (v < 128) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 6;
    int b = 128 + (shift - 1) * 64 + (int)((v >> shift) - 64);
    return b < N_BUCKETS ? b : N_BUCKETS - 1;
}

static inline uint64_t bucket_value(int b)
{
    if (b < 128) return (uint64_t)b;
    int shift = (b - 128) / 64 + 1;
    uint64_t top = (uint64_t)((b - 128) % 64 + 64);
    return (top << shift) + ((1ull << shift) >> 1); /* middle of the bucket */
}

static double percentile_us(double q)
{
    if (!lat_count) return 0;
    uint64_t target = (uint64_t)(q * (double)lat_count);
    if (target < 1) target = 1;
    uint64_t seen = 0;
    for (int b = 0; b < N_BUCKETS; b++) {
        seen += hist[b];
        if (seen >= target) {
            uint64_t v = bucket_value(b);
            return (v > lat_max_ns ? lat_max_ns : v) / 1000.0;
        }
    }
    return lat_max_ns / 1000.0;
}

/* -- errors ------------------------------------------------------------------ */

static void fail(enum errkind kind, const char *fmt, ...)
{
    errors[kind]++;
    if (n_samples < MAX_SAMPLES) {
        int n = snprintf(samples[n_samples], sizeof(samples[0]), "%s: ", errnames[kind]);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(samples[n_samples] + n, sizeof(samples[0]) - (size_t)n, fmt, ap);
        va_end(ap);
        n_samples++;
    }
}

/* -- /proc: CPU time of a process and its descendants ------------------------- */

struct procent {
    long pid, ppid;
    unsigned long long ticks;
};

static long long tree_ticks(long root)
{
    DIR *d = opendir("/proc");
    if (!d) return -1;
    size_t cap = 1024, n = 0;
    struct procent *p = malloc(cap * sizeof(*p));
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!isdigit((unsigned char)de->d_name[0])) continue;
        char path[300], buf[1024];
        snprintf(path, sizeof(path), "/proc/%s/stat", de->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t r = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = 0;
        char *s = strrchr(buf, ')'); /* the command name may hold spaces */
        if (!s) continue;
        char st;
        long ppid;
        unsigned long long ut, stt;
        /* fields 3..15: state ppid pgrp session tty tpgid flags minflt cminflt
           majflt cmajflt utime stime */
        if (sscanf(s + 2, "%c %ld %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &st, &ppid,
                   &ut, &stt) != 4)
            continue;
        if (n == cap) p = realloc(p, (cap *= 2) * sizeof(*p));
        p[n++] = (struct procent){atol(de->d_name), ppid, ut + stt};
    }
    closedir(d);
    /* Mark the tree: a few passes suffice for the shallow trees of daemons. */
    char *in = calloc(n, 1);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i].pid == root) in[i] = 1, found = 1;
    for (int changed = 1, pass = 0; changed && pass < 16; pass++) {
        changed = 0;
        for (size_t i = 0; i < n; i++) {
            if (in[i]) continue;
            for (size_t j = 0; j < n; j++)
                if (in[j] && p[j].pid == p[i].ppid) { in[i] = 1, changed = 1; break; }
        }
    }
    long long total = found ? 0 : -1;
    for (size_t i = 0; found && i < n; i++)
        if (in[i]) total += (long long)p[i].ticks;
    free(in);
    free(p);
    return total;
}

/* Busy ticks of each core (user nice system irq softirq steal), from /proc/stat. */
#define MAX_CPUS 64
static int read_core_busy(unsigned long long *busy)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        int cpu;
        unsigned long long u, ni, sy, id, io, irq, sirq, st;
        if (sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &u, &ni, &sy, &id,
                   &io, &irq, &sirq, &st) == 9 &&
            cpu >= 0 && cpu < MAX_CPUS) {
            busy[cpu] = u + ni + sy + irq + sirq + st;
            if (cpu + 1 > n) n = cpu + 1;
        }
    }
    fclose(f);
    return n;
}

static double cpu_self_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* -- keys ----------------------------------------------------------------------- */

static void load_keys(void)
{
    FILE *f = fopen(keys_path, "r");
    if (!f) { perror(keys_path); exit(2); }
    struct stat sb;
    fstat(fileno(f), &sb);
    char *text = malloc((size_t)sb.st_size + 1);
    size_t len = fread(text, 1, (size_t)sb.st_size, f);
    fclose(f);
    text[len] = 0;
    size_t cap = 1024;
    keys = malloc(cap * sizeof(*keys));
    size_t map_len = strlen(map_name);
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r') line[--ll] = 0;
        if (ll) {
            char *tab = strchr(line, '\t');
            if (tab) *tab = 0;
            if (n_keys == cap) keys = realloc(keys, (cap *= 2) * sizeof(*keys));
            struct key *k = &keys[n_keys++];
            k->domain = line;
            size_t payload = map_len + 1 + strlen(line);
            k->req = malloc(payload + 32);
            k->req_len = (size_t)sprintf(k->req, "%zu:%s %s,", payload, map_name, line);
            k->exp = expect_all ? expect_all : (tab ? tab + 1 : NULL);
            k->exp_len = k->exp ? strlen(k->exp) : 0;
        }
        line = nl ? nl + 1 : NULL;
    }
    if (!n_keys) { fprintf(stderr, "loadgen: %s holds no keys\n", keys_path); exit(2); }
}

/* -- reply checks ------------------------------------------------------------------- */

static const char OK_MATCH[] = "OK secure match=";
#define OK_MATCH_LEN (sizeof(OK_MATCH) - 1)

/* Is pattern p (length n) one of the ':'-separated items of list l (length m)? */
static int in_list(const char *p, size_t n, const char *l, size_t m)
{
    for (size_t i = 0; i <= m;) {
        const char *e = memchr(l + i, ':', m - i);
        size_t j = e ? (size_t)(e - l) : m;
        if (j - i == n && memcmp(l + i, p, n) == 0) return 1;
        i = j + 1;
    }
    return 0;
}

static size_t count_items(const char *l, size_t m)
{
    size_t c = 1;
    for (size_t i = 0; i < m; i++) c += l[i] == ':';
    return c;
}

/* "OK secure match=<set> <rest>": same set, same rest. */
static int same_as_set(const char *a, size_t an, const char *b, size_t bn)
{
    if (an < OK_MATCH_LEN || bn < OK_MATCH_LEN || memcmp(a, OK_MATCH, OK_MATCH_LEN) ||
        memcmp(b, OK_MATCH, OK_MATCH_LEN))
        return 0;
    a += OK_MATCH_LEN, an -= OK_MATCH_LEN, b += OK_MATCH_LEN, bn -= OK_MATCH_LEN;
    const char *ae = memchr(a, ' ', an), *be = memchr(b, ' ', bn);
    size_t al = ae ? (size_t)(ae - a) : an, bl = be ? (size_t)(be - b) : bn;
    if (an - al != bn - bl || memcmp(a + al, b + bl, an - al)) return 0;
    if (count_items(a, al) != count_items(b, bl)) return 0;
    for (int pass = 0; pass < 2; pass++) { /* a ⊆ b and b ⊆ a */
        const char *x = pass ? b : a, *y = pass ? a : b;
        size_t xl = pass ? bl : al, yl = pass ? al : bl;
        for (size_t i = 0; i <= xl;) {
            const char *e = memchr(x + i, ':', xl - i);
            size_t j = e ? (size_t)(e - x) : xl;
            if (!in_list(x + i, j - i, y, yl)) return 0;
            i = j + 1;
        }
    }
    return 1;
}

static void check_reply(struct conn *c, const char *p, size_t n)
{
    const struct key *k = &keys[c->key];
    if (!k->exp || (n == k->exp_len && memcmp(p, k->exp, n) == 0)) return;
    if (allow_notfound && n == 9 && memcmp(p, "NOTFOUND ", 9) == 0) {
        notfound_replies++;
        return;
    }
    if (set_match && same_as_set(p, n, k->exp, k->exp_len)) return;
    fail(E_MISMATCH, "key %s: got '%.*s'", k->domain, (int)(n > 120 ? 120 : n), p);
}

/* -- connections ----------------------------------------------------------------------- */

static void set_events(struct conn *c, int want_out)
{
    if (want_out == c->want_out) return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0),
                             .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want_out;
}

static void kill_conn(struct conn *c, enum errkind kind, const char *why)
{
    if (c->state == ST_WAIT) lost++;
    if (c->state == ST_CONNECTING || c->state == ST_RETRY)
        fail(E_CONNECT, "%s", why);
    else
        fail(kind, "%s", why);
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = ST_DEAD;
}

static void send_next(struct conn *c)
{
    const struct key *k;
    if (c->state == ST_IDLE) {
        c->key = next_key;
        next_key = next_key + 1 == n_keys ? 0 : next_key + 1;
        c->out_off = 0;
        c->in_window = phase == PH_WINDOW;
        c->sent_ns = now_ns();
        c->state = ST_WAIT;
    }
    k = &keys[c->key];
    while (c->out_off < k->req_len) {
        ssize_t w = send(c->fd, k->req + c->out_off, k->req_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) { set_events(c, 1); return; }
            kill_conn(c, E_CLOSED, strerror(errno));
            return;
        }
        c->out_off += (size_t)w;
    }
    set_events(c, 0);
}

static void start_connect(struct conn *c)
{
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) { fail(E_CONNECT, "socket: %s", strerror(errno)); c->state = ST_DEAD; return; }
    if (!is_unix) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    int rc = connect(fd, (struct sockaddr *)&addr, addr_len);
    if (rc < 0 && errno == EAGAIN && is_unix) { /* listen queue full: retry soon */
        close(fd);
        c->state = ST_RETRY;
        return;
    }
    if (rc < 0 && errno != EINPROGRESS) {
        close(fd);
        fail(E_CONNECT, "connect: %s", strerror(errno));
        c->state = ST_DEAD;
        return;
    }
    c->fd = fd;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    c->state = ST_CONNECTING;
    if (rc == 0) { /* connected at once (unix sockets) */
        c->state = ST_IDLE;
        send_next(c); /* the opening request */
    }
}

static void on_writable(struct conn *c)
{
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { kill_conn(c, E_CONNECT, strerror(err)); return; }
        c->state = ST_IDLE;
    }
    if (c->state == ST_WAIT || phase == PH_WARMUP || phase == PH_WINDOW ||
        (phase == PH_CONNECT && c->replies == 0))
        send_next(c); /* the rest of a request, the next one, or the opening one */
    else
        set_events(c, 0);
}

static void on_readable(struct conn *c)
{
    if (c->in_len == IN_SIZE) { kill_conn(c, E_PROTOCOL, "reply too large"); return; }
    ssize_t r = recv(c->fd, c->in + c->in_len, IN_SIZE - c->in_len, 0);
    if (r == 0) { kill_conn(c, E_CLOSED, "connection closed by the server"); return; }
    if (r < 0) {
        if (errno != EAGAIN) kill_conn(c, E_CLOSED, strerror(errno));
        return;
    }
    uint64_t t = now_ns();
    c->in_len += (size_t)r;
    if (c->state != ST_WAIT) { kill_conn(c, E_PROTOCOL, "bytes received with no request"); return; }
    /* netstring: digits ':' payload ',' */
    size_t len = 0, i = 0;
    while (i < c->in_len && c->in[i] >= '0' && c->in[i] <= '9' && i < 7)
        len = len * 10 + (size_t)(c->in[i++] - '0');
    if (i == c->in_len) return; /* length still arriving */
    if (c->in[i] != ':' || i == 0 || len > IN_SIZE) {
        kill_conn(c, E_PROTOCOL, "bad netstring length in reply");
        return;
    }
    if (c->in_len < i + 2 + len) return; /* payload still arriving */
    if (c->in[i + 1 + len] != ',') { kill_conn(c, E_PROTOCOL, "reply not terminated by ','"); return; }
    if (c->in_len > i + 2 + len) { kill_conn(c, E_PROTOCOL, "more bytes than one reply"); return; }
    check_reply(c, c->in + i + 1, len);
    c->in_len = 0;
    c->replies++;
    if (c->in_window) {
        uint64_t lat = t - c->sent_ns;
        hist[bucket_of(lat)]++;
        lat_count++;
        lat_sum_ns += lat;
        if (lat > lat_max_ns) lat_max_ns = lat;
    }
    if (phase == PH_WINDOW) window_replies++;
    c->state = ST_IDLE;
    if (phase == PH_WARMUP || phase == PH_WINDOW) send_next(c);
}

static void parse_address(const char *a)
{
    memset(&addr, 0, sizeof(addr));
    if (strncmp(a, "unix:", 5) == 0) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&addr;
        sun->sun_family = AF_UNIX;
        if (strlen(a + 5) >= sizeof(sun->sun_path)) usage();
        strcpy(sun->sun_path, a + 5);
        addr_len = sizeof(*sun);
        is_unix = 1;
        return;
    }
    char host[256];
    const char *colon = strrchr(a, ':');
    if (!colon || (size_t)(colon - a) >= sizeof(host)) usage();
    memcpy(host, a, (size_t)(colon - a));
    host[colon - a] = 0;
    char *h = host;
    if (h[0] == '[') { h++; h[strlen(h) - 1] = 0; }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *ai;
    if (getaddrinfo(h, colon + 1, &hints, &ai)) usage();
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    addr_len = ai->ai_addrlen;
    freeaddrinfo(ai);
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') printf("\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f) printf("\\u%04x", ch);
        else putchar(ch);
    }
    putchar('"');
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "c:d:w:W:D:k:m:e:snP:l:")) != -1) {
        switch (opt) {
        case 'c': n_conns = atoi(optarg); break;
        case 'd': window_s = atof(optarg); break;
        case 'w': warmup_s = atof(optarg); break;
        case 'W': max_warmup_s = atof(optarg); break;
        case 'D': drain_s = atof(optarg); break;
        case 'k': keys_path = optarg; break;
        case 'm': map_name = optarg; break;
        case 'e': expect_all = optarg; break;
        case 's': set_match = 1; break;
        case 'n': allow_notfound = 1; break;
        case 'P': server_pid = atol(optarg); break;
        case 'l': label = optarg; break;
        default: usage();
        }
    }
    /* Bounded in time whatever the arguments say. */
    if (optind != argc - 1 || !keys_path || n_conns < 1 || n_conns > 60000 || window_s <= 0 ||
        window_s > 3600 || warmup_s < 0 || max_warmup_s > 600 || drain_s < 0 || drain_s > 600)
        usage();
    parse_address(argv[optind]);
    load_keys();

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < (rlim_t)n_conns + 64) {
        rl.rlim_cur = (rlim_t)n_conns + 64;
        if (rl.rlim_max < rl.rlim_cur) rl.rlim_max = rl.rlim_cur;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) { perror("setrlimit"); return 2; }
    }
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)n_conns, sizeof(*conns));

    uint64_t t_begin = now_ns(), t0 = 0, t1 = 0, drain_end = 0;
    long long ticks0 = -1, ticks1 = -1;
    unsigned long long busy0[MAX_CPUS] = {0}, busy1[MAX_CPUS] = {0};
    int n_cpus = 0;
    double cpu0 = 0, cpu1 = 0;
    for (int i = 0; i < n_conns; i++) {
        conns[i].fd = -1;
        conns[i].state = ST_RETRY; /* not opened yet */
    }
    int opened = 0;
    uint64_t last_retry = t_begin, t_warm = 0;
    struct epoll_event events[MAX_EVENTS];
    while (phase != PH_DONE) {
        uint64_t t = now_ns();
        if (phase == PH_CONNECT) {
            /* Connections open in batches, each answering one request before
               the next batch opens, and the load starts once all are open: a
               running Postfix has its connections established already, so a
               server with a short listen queue is not judged on its accept()
               latency under full load. */
            if (t - last_retry > 5000000) { /* unix listen queue was full */
                last_retry = t;
                for (int i = 0; i < opened; i++)
                    if (conns[i].state == ST_RETRY) start_connect(&conns[i]);
            }
            int pending = 0;
            for (int i = 0; i < opened; i++)
                pending += conns[i].state == ST_RETRY || conns[i].state == ST_CONNECTING ||
                           conns[i].state == ST_WAIT;
            int expired = t - t_begin >= (uint64_t)(max_warmup_s * 1e9);
            if (!pending && opened < n_conns && !expired) {
                int end = opened + CONNECT_BATCH < n_conns ? opened + CONNECT_BATCH : n_conns;
                for (; opened < end; opened++) start_connect(&conns[opened]);
            } else if ((!pending && opened == n_conns) || expired) {
                for (int i = 0; i < n_conns; i++) {
                    struct conn *c = &conns[i];
                    if (c->state == ST_RETRY || c->state == ST_CONNECTING || i >= opened)
                        kill_conn(c, E_CONNECT, "not connected in time");
                    else if (c->state == ST_WAIT)
                        kill_conn(c, E_STALLED, "no reply to the opening request in time");
                }
                phase = PH_WARMUP;
                t_warm = now_ns();
                for (int i = 0; i < n_conns; i++)
                    if (conns[i].state == ST_IDLE) send_next(&conns[i]);
            }
        } else if (phase == PH_WARMUP) {
            int all = 1;
            for (int i = 0; i < n_conns && all; i++)
                all = conns[i].state == ST_DEAD || conns[i].replies > 0;
            int expired = t - t_warm >= (uint64_t)(max_warmup_s * 1e9);
            if (t - t_warm >= (uint64_t)(warmup_s * 1e9) && (all || expired)) {
                for (int i = 0; expired && i < n_conns; i++) {
                    struct conn *c = &conns[i];
                    if (c->state != ST_DEAD && c->replies == 0) {
                        if (c->state == ST_WAIT) lost++;
                        fail(E_STALLED, "no reply within %.0f s of the first request",
                             max_warmup_s);
                        if (c->fd >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); }
                        c->fd = -1;
                        c->state = ST_DEAD;
                    }
                }
                phase = PH_WINDOW;
                if (server_pid) ticks0 = tree_ticks(server_pid);
                n_cpus = read_core_busy(busy0);
                cpu0 = cpu_self_s();
                t0 = now_ns();
            }
        } else if (phase == PH_WINDOW) {
            if (t - t0 >= (uint64_t)(window_s * 1e9)) {
                t1 = now_ns();
                cpu1 = cpu_self_s();
                read_core_busy(busy1);
                if (server_pid) ticks1 = tree_ticks(server_pid);
                phase = PH_DRAIN;
                drain_end = t1 + (uint64_t)(drain_s * 1e9);
            }
        }
        if (phase == PH_DRAIN) {
            int owed = 0;
            for (int i = 0; i < n_conns; i++) owed += conns[i].state == ST_WAIT;
            if (!owed) phase = PH_DONE;
            else if (t >= drain_end) {
                lost += (uint64_t)owed;
                phase = PH_DONE;
            }
            if (phase == PH_DONE) break;
        }
        int n = epoll_wait(ep, events, MAX_EVENTS, 5);
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c->state == ST_DEAD) continue;
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (c->state == ST_CONNECTING) on_writable(c);
                if (c->state != ST_DEAD) on_readable(c);
            } else if (events[i].events & EPOLLOUT) {
                on_writable(c);
            }
        }
    }

    int alive = 0;
    for (int i = 0; i < n_conns; i++) {
        alive += conns[i].state != ST_DEAD;
        if (conns[i].fd >= 0) close(conns[i].fd);
    }
    double dur = (t1 - t0) / 1e9;
    uint64_t total_errors = 0;
    for (int k = 0; k < E_KINDS; k++) total_errors += errors[k];
    long hz = sysconf(_SC_CLK_TCK);

    printf("{\"label\":");
    json_string(label);
    printf(",\"target\":");
    json_string(argv[optind]);
    printf(",\"connections\":%d,\"alive_at_end\":%d,\"keys\":%zu", n_conns, alive, n_keys);
    printf(",\"validation\":\"%s\"", keys[0].exp ? (set_match ? "set" : "exact") : "none");
    printf(",\"connect_s\":%.3f,\"warmup_s\":%.3f,\"duration_s\":%.3f", (t_warm - t_begin) / 1e9,
           (t0 - t_warm) / 1e9, dur);
    printf(",\"requests\":%llu,\"rps\":%.1f", (unsigned long long)window_replies,
           dur > 0 ? window_replies / dur : 0.0);
    printf(",\"errors\":%llu,\"error_kinds\":{", (unsigned long long)total_errors);
    for (int k = 0; k < E_KINDS; k++)
        printf("%s\"%s\":%llu", k ? "," : "", errnames[k], (unsigned long long)errors[k]);
    printf("},\"lost\":%llu,\"notfound\":%llu", (unsigned long long)lost,
           (unsigned long long)notfound_replies);
    printf(",\"latency_us\":{\"count\":%llu,\"mean\":%.1f,\"p50\":%.1f,\"p90\":%.1f,"
           "\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}",
           (unsigned long long)lat_count, lat_count ? lat_sum_ns / 1000.0 / lat_count : 0.0,
           percentile_us(0.50), percentile_us(0.90), percentile_us(0.99), percentile_us(0.999),
           lat_max_ns / 1000.0);
    if (ticks0 >= 0 && ticks1 >= 0) {
        double s = (double)(ticks1 - ticks0) / (double)hz;
        printf(",\"server_cpu_s\":%.3f,\"server_cpu_us_per_req\":%.2f", s,
               window_replies ? s * 1e6 / window_replies : 0.0);
    } else {
        printf(",\"server_cpu_s\":null,\"server_cpu_us_per_req\":null");
    }
    printf(",\"client_cpu_s\":%.3f,\"client_cpu_util\":%.3f", cpu1 - cpu0,
           dur > 0 ? (cpu1 - cpu0) / dur : 0.0);
    /* How busy each core was over the window, whoever used it: what is not
       the server or loadgen is other load on the machine. */
    printf(",\"core_busy\":[");
    for (int k = 0; k < n_cpus; k++)
        printf("%s%.3f", k ? "," : "", dur > 0 ? (busy1[k] - busy0[k]) / (double)hz / dur : 0.0);
    printf("]");
    printf(",\"error_samples\":[");
    for (int k = 0; k < n_samples; k++) {
        if (k) putchar(',');
        json_string(samples[k]);
    }
    printf("]}\n");
    return 0;
}
