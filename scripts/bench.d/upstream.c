/*
 * Fast line-based TCP upstream for scripts/bench (one thread, epoll, non-blocking).
 *
 *   upstream [--host 127.0.0.1] [--port 0] [--greeting N] [--accept-proxy]
 *
 * Prints "ready <port>" on stdout once it listens. For every accepted connection:
 *   - with --accept-proxy, first reads a PROXY protocol header (v1 line or v2 binary), as a game
 *     behind HAProxy's `accept-proxy` does: nothing else until it has come whole, then it is
 *     dropped (never echoed); a connection that starts otherwise is closed;
 *   - sends a greeting of N bytes (pattern "greeting ..." padded, ending in "\r\n"), if N > 0
 *     (with --accept-proxy, once the header has come);
 *   - reads lines (\n-terminated, a trailing \r is stripped);
 *   - "flood <n>": sends n bytes where byte i is PATTERN[i % 64], in chunks, respecting
 *     EAGAIN / EPOLLOUT (never blocks, never materialises the whole flood);
 *   - "tag <word>": names this connection (up to 31 bytes) and answers "tagged <word>\r\n";
 *   - "broadcast <label>": sends every tagged connection, this one included, BROADCAST_FMT
 *     with its tag and the label (one send each, queued on EAGAIN);
 *   - any other line: echoed back at once as "<line>\r\n".
 * Raises RLIMIT_NOFILE to the hard limit. SIGTERM/SIGINT: exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static const char PATTERN[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789\r\n";
#define CHUNK 65536
#define LINEMAX 8192
/* A MUD-sized line; scripts/bench.d/loadclient.c (hold) expects exactly this. */
#define BROADCAST_FMT "%s: broadcast %s, one line of about the length a MUD sends to every player\r\n"

struct conn {
    int fd;
    int want_out;        /* EPOLLOUT registered */
    char *line;          /* partial input line */
    size_t line_len;
    char *out;           /* pending echo / greeting bytes */
    size_t out_len, out_off, out_cap;
    uint64_t flood_left; /* bytes of flood still to send */
    uint64_t flood_pos;  /* index in the current flood */
    char tag[32];        /* set by "tag <word>"; empty: not in broadcasts */
    int proxy_pending;   /* --accept-proxy: the PROXY header has not come whole yet */
    size_t hdr_len;      /* bytes of it so far, in hdr */
    unsigned char hdr[232];
};

static struct conn **conns;
static size_t nconns_cap;
static int ep;
static char *patbuf;     /* CHUNK + 64 bytes of pattern: patbuf + (pos % 64) is a valid chunk start */
static char *greeting;
static size_t greeting_len;
static int accept_proxy;
static volatile sig_atomic_t stop;
static const unsigned char V2SIG[12] = { 0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A };

static void on_signal(int s) { (void)s; stop = 1; }

static void die(const char *what) { perror(what); exit(1); }

static void set_events(struct conn *c) {
    int want = (c->out_len > c->out_off) || c->flood_left > 0;
    if (want == c->want_out) return;
    struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.fd = c->fd };
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl mod");
    c->want_out = want;
}

static void close_conn(struct conn *c) {
    close(c->fd);
    conns[c->fd] = NULL;
    free(c->line);
    free(c->out);
    free(c);
}

static void queue_out(struct conn *c, const char *p, size_t n) {
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 256;
            while (cap < c->out_len + n) cap *= 2;
            c->out = realloc(c->out, cap);
            if (!c->out) die("realloc");
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

/* Writes what it can. Returns -1 if the connection died (and was closed). */
static int flush_out(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { set_events(c); return 0; }
            close_conn(c);
            return -1;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_len > 4096) { free(c->out); c->out = NULL; c->out_cap = 0; }
    c->out_off = c->out_len = 0;
    while (c->flood_left > 0) {
        size_t n = c->flood_left < CHUNK ? (size_t)c->flood_left : CHUNK;
        ssize_t w = send(c->fd, patbuf + (c->flood_pos % 64), n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            close_conn(c);
            return -1;
        }
        c->flood_left -= (uint64_t)w;
        c->flood_pos += (uint64_t)w;
    }
    set_events(c);
    return 0;
}

/* Queues the broadcast line on every tagged connection and writes what the kernel takes now
 * (`self`, whose input is being read, is flushed by on_readable). */
static void broadcast(struct conn *self, const char *label) {
    for (size_t fd = 0; fd < nconns_cap; fd++) {
        struct conn *c = conns[fd];
        if (!c || !c->tag[0]) continue;
        char line[256];
        int k = snprintf(line, sizeof line, BROADCAST_FMT, c->tag, label);
        queue_out(c, line, (size_t)k);
        if (c != self) flush_out(c);
    }
}

/* Copies the argument of a command (n bytes at s) into out as a C string, cut to fit; its length. */
static size_t argument(const char *s, size_t n, char *out, size_t cap) {
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(out, s, k);
    out[k] = 0;
    return k;
}

static void handle_line(struct conn *c, char *s, size_t n) {
    if (n > 0 && s[n - 1] == '\r') n--;
    if (n > 4 && memcmp(s, "tag ", 4) == 0) {
        size_t k = argument(s + 4, n - 4, c->tag, sizeof c->tag);
        queue_out(c, "tagged ", 7);
        queue_out(c, c->tag, k);
        queue_out(c, "\r\n", 2);
        return;
    }
    if (n > 10 && memcmp(s, "broadcast ", 10) == 0) {
        char label[32];
        argument(s + 10, n - 10, label, sizeof label);
        broadcast(c, label);
        return;
    }
    if (n > 6 && memcmp(s, "flood ", 6) == 0) {
        char tmp[32];
        argument(s + 6, n - 6, tmp, sizeof tmp);
        unsigned long long v = strtoull(tmp, NULL, 10);
        if (c->flood_left == 0) c->flood_pos = 0;
        c->flood_left += v;
        return;
    }
    queue_out(c, s, n);
    queue_out(c, "\r\n", 2);
}

static void send_greeting(struct conn *c) {
    if (greeting_len == 0) return;
    queue_out(c, greeting, greeting_len);
}

/* Takes PROXY header bytes from buf (n of them) into c->hdr. Returns how many it took, or -1 if
 * the connection does not start with a valid-looking header (checked only as far as the bench
 * needs: signature, length, the v1 line's end). Clears proxy_pending once it is whole. */
static long take_proxy_header(struct conn *c, const char *buf, size_t n) {
    size_t took = 0;
    while (took < n) {
        if (c->hdr_len >= sizeof c->hdr) return -1;
        c->hdr[c->hdr_len++] = (unsigned char)buf[took++];
        size_t k = c->hdr_len;
        if (c->hdr[0] == 'P') {
            if (k <= 6 && memcmp(c->hdr, "PROXY ", k) != 0) return -1;
            if (k > 107) return -1;
            if (k >= 2 && c->hdr[k - 2] == '\r' && c->hdr[k - 1] == '\n') { c->proxy_pending = 0; return (long)took; }
        } else {
            if (k <= 12 && c->hdr[k - 1] != V2SIG[k - 1]) return -1;
            if (k >= 16 && k == 16 + (((size_t)c->hdr[14] << 8) | c->hdr[15])) { c->proxy_pending = 0; return (long)took; }
        }
    }
    return (long)took;
}

static void on_readable(struct conn *c) {
    char buf[65536];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r == 0) { close_conn(c); return; }
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            close_conn(c);
            return;
        }
        size_t start = 0;
        if (c->proxy_pending) {
            long took = take_proxy_header(c, buf, (size_t)r);
            if (took < 0) { close_conn(c); return; }
            start = (size_t)took;
            if (!c->proxy_pending) send_greeting(c);
        }
        for (size_t i = start; i < (size_t)r; i++) {
            if (buf[i] != '\n') continue;
            if (c->line_len > 0) {
                size_t k = i - start;
                if (c->line_len + k > LINEMAX) k = LINEMAX - c->line_len;
                memcpy(c->line + c->line_len, buf + start, k);
                handle_line(c, c->line, c->line_len + k);
                c->line_len = 0;
            } else {
                handle_line(c, buf + start, i - start);
            }
            start = i + 1;
        }
        if (start < (size_t)r) {
            if (!c->line) { c->line = malloc(LINEMAX); if (!c->line) die("malloc"); }
            size_t k = (size_t)r - start;
            if (c->line_len + k > LINEMAX) k = LINEMAX - c->line_len; /* over-long lines are cut */
            memcpy(c->line + c->line_len, buf + start, k);
            c->line_len += k;
        }
        if ((size_t)r < sizeof buf) break;
    }
    flush_out(c);
}

static void on_accept(int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EMFILE || errno == ENFILE) { fprintf(stderr, "upstream: accept: out of descriptors\n"); return; }
            return;
        }
        if ((size_t)fd >= nconns_cap) { fprintf(stderr, "upstream: fd %d over table\n", fd); close(fd); continue; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("calloc");
        c->fd = fd;
        conns[fd] = c;
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl add");
        if (accept_proxy) { c->proxy_pending = 1; continue; }
        if (greeting_len > 0) {
            ssize_t w = send(fd, greeting, greeting_len, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN) { close_conn(c); continue; }
            if (w < 0) w = 0;
            if ((size_t)w < greeting_len) {
                queue_out(c, greeting + w, greeting_len - (size_t)w);
                set_events(c);
            }
        }
    }
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0;
    long glen = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--greeting") && i + 1 < argc) glen = atol(argv[++i]);
        else if (!strcmp(argv[i], "--accept-proxy")) accept_proxy = 1;
        else { fprintf(stderr, "usage: upstream [--host H] [--port P] [--greeting N] [--accept-proxy]\n"); return 2; }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    nconns_cap = rl.rlim_cur == RLIM_INFINITY ? 1048576 : (size_t)rl.rlim_cur;
    conns = calloc(nconns_cap, sizeof *conns);
    patbuf = malloc(CHUNK + 64);
    if (!conns || !patbuf) die("calloc");
    for (size_t i = 0; i < CHUNK + 64; i++) patbuf[i] = PATTERN[i % 64];
    if (glen > 0) {
        greeting_len = (size_t)glen;
        greeting = malloc(greeting_len);
        const char *hello = "greeting from the bench upstream ";
        for (size_t i = 0; i < greeting_len; i++) greeting[i] = hello[i % strlen(hello)];
        if (greeting_len >= 2) { greeting[greeting_len - 2] = '\r'; }
        greeting[greeting_len - 1] = '\n';
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) { fprintf(stderr, "bad host %s\n", host); return 2; }
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0) die("bind");
    if (listen(lfd, 65535) < 0) die("listen");
    socklen_t sl = sizeof sin;
    getsockname(lfd, (struct sockaddr *)&sin, &sl);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = -1 };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");
    printf("ready %d\n", ntohs(sin.sin_port));
    fflush(stdout);

    struct epoll_event evs[1024];
    while (!stop) {
        int n = epoll_wait(ep, evs, 1024, 500);
        if (n < 0) { if (errno == EINTR) continue; die("epoll_wait"); }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == -1) { on_accept(lfd); continue; }
            struct conn *c = conns[fd];
            if (!c) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                on_readable(c);
                c = conns[fd];
                if (!c) continue;
            }
            if (evs[i].events & EPOLLOUT) flush_out(c);
        }
    }
    return 0;
}
