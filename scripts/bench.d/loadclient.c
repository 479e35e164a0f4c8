/*
 * Load client for scripts/bench: one thread, epoll, keep-alive HTTP/1.1 connections to uvproxyd.
 *
 *   loadclient create -p PORT -n N -c C -o IDS_FILE [-P 1]   create N sessions (GET /mud, or
 *                                                            POST /sessions with -P 1) over C
 *                                                            connections; prints rate, writes ids
 *   loadclient drain  -p PORT -i IDS_FILE -c C -g G [-t 1]   read the G-byte greeting of every
 *                                                            session (since=0&wait=5), then ack it
 *                                                            (a read at since=G); with -t 1 first
 *                                                            send "tag <index in IDS_FILE>" and
 *                                                            read the upstream's answer too
 *   loadclient echo   -p PORT -c C -m M -g G [-W WARMUP]     C clients, each its own session and two
 *                                                            connections (a long-poll held with
 *                                                            since, and one for input); M timed
 *                                                            round trips each; prints p50/p99/max
 *   loadclient flood  -p PORT -s S -b BYTES -g G             S sessions each send "flood BYTES",
 *                                                            drained with since=N&wait=5; every byte
 *                                                            is checked against the pattern
 *   loadclient hold   -p PORT -i IDS_FILE -k sse|poll -g G   hold an SSE stream or a long-poll on
 *                                                            every session (one connection each),
 *                                                            then broadcast on command (see hold)
 * Common: -h HOST (127.0.0.1), -T TIMEOUT_SECONDS (120).
 * Output: one line of key=value pairs on stdout. Exit 0 on success, 1 on failed checks,
 * 3 on timeout, 2 on usage / set-up errors.
 *
 * Response parsing is minimal: status line, Content-Length, X-Next-Offset, Connection: close.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static const char PATTERN[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789\r\n";

/* ---------- options ---------- */
static const char *host = "127.0.0.1";
static int port = 0;
static long opt_n = 1000, opt_c = 64, opt_m = 1000, opt_g = 0, opt_w = 0, opt_s = 50;
static long long opt_b = 2000000;
static const char *opt_o = NULL, *opt_i = NULL;
static double opt_timeout = 120;

/* ---------- utilities ---------- */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadclient: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n);
    if (!p && n) fatal("out of memory");
    return p;
}

/* ---------- connections ---------- */
struct conn;
typedef void (*resp_fn)(struct conn *c, int status, const char *body, size_t len, long long next);

struct conn {
    int fd;
    int owner;          /* index of the client / session / worker */
    int role;           /* echo: 0 = long-poll connection, 1 = input connection */
    char *rbuf;
    size_t rlen, rcap;
    char *wbuf;
    size_t wlen, woff, wcap;
    int wout;           /* EPOLLOUT registered */
    int busy;           /* a request is outstanding */
    resp_fn on_resp;
};

static int ep;
static double deadline;

static struct conn *conn_open(int owner, int role, resp_fn fn) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) fatal("socket: %s", strerror(errno));
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) fatal("bad host %s", host);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) fatal("connect %s:%d: %s", host, port, strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct conn *c = calloc(1, sizeof *c);
    if (!c) fatal("out of memory");
    c->fd = fd;
    c->owner = owner;
    c->role = role;
    c->on_resp = fn;
    c->rcap = 16384;
    c->rbuf = xrealloc(NULL, c->rcap);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) fatal("epoll_ctl: %s", strerror(errno));
    return c;
}

static void conn_flush(struct conn *c) {
    while (c->woff < c->wlen) {
        ssize_t w = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            fatal("send: %s", strerror(errno));
        }
        c->woff += (size_t)w;
    }
    int want = c->woff < c->wlen;
    if (want != c->wout) {
        struct epoll_event ev = { .events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->wout = want;
    }
    if (!want) c->woff = c->wlen = 0;
}

/* Sends one request (printf-style request line + headers are added). */
static void conn_request(struct conn *c, const char *method, const char *fmt, ...) {
    char target[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(target, sizeof target, fmt, ap);
    va_end(ap);
    char req[768];
    int n;
    if (strcmp(method, "POST") == 0)
        n = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", target);
    else
        n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: localhost\r\n\r\n", method, target);
    if (c->wlen + (size_t)n > c->wcap) {
        c->wcap = c->wlen + (size_t)n + 1024;
        c->wbuf = xrealloc(c->wbuf, c->wcap);
    }
    memcpy(c->wbuf + c->wlen, req, (size_t)n);
    c->wlen += (size_t)n;
    c->busy = 1;
    conn_flush(c);
}

/* Parses complete responses in rbuf and hands them to the connection's callback. */
static void conn_parse(struct conn *c) {
    for (;;) {
        if (c->rlen < 12) return;
        char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (!end) return;
        size_t hlen = (size_t)(end - c->rbuf) + 4;
        if (strncmp(c->rbuf, "HTTP/1.", 7) != 0) fatal("bad response: %.40s", c->rbuf);
        int status = atoi(c->rbuf + 9);
        long long clen = 0, next = -1;
        int close_after = 0;
        char *p = memchr(c->rbuf, '\n', hlen) + 1;
        while (p < c->rbuf + hlen - 2) {
            char *eol = memchr(p, '\n', (size_t)(c->rbuf + hlen - p));
            if (!eol) break;
            if (strncasecmp(p, "content-length:", 15) == 0) clen = atoll(p + 15);
            else if (strncasecmp(p, "x-next-offset:", 14) == 0) next = atoll(p + 14);
            else if (strncasecmp(p, "connection:", 11) == 0) {
                const char *v = p + 11;
                while (*v == ' ') v++;
                if (strncasecmp(v, "close", 5) == 0) close_after = 1;
            }
            p = eol + 1;
        }
        size_t total = hlen + (size_t)clen;
        if (c->rlen < total) {
            if (c->rcap < total) { c->rcap = total + 4096; c->rbuf = xrealloc(c->rbuf, c->rcap); }
            return;
        }
        c->busy = 0;
        c->on_resp(c, status, c->rbuf + hlen, (size_t)clen, next);
        memmove(c->rbuf, c->rbuf + total, c->rlen - total);
        c->rlen -= total;
        if (close_after) fatal("server closed the connection (status %d)", status);
    }
}

static void conn_readable(struct conn *c) {
    for (;;) {
        if (c->rcap - c->rlen < 16384) { c->rcap = c->rcap * 2; c->rbuf = xrealloc(c->rbuf, c->rcap); }
        ssize_t r = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen - 1, 0);
        if (r == 0) fatal("connection closed by the server");
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            fatal("recv: %s", strerror(errno));
        }
        c->rlen += (size_t)r;
        c->rbuf[c->rlen] = 0;
        conn_parse(c);
    }
}

static int finished;

static void run_loop(void) {
    struct epoll_event evs[256];
    while (!finished) {
        if (now_s() > deadline) {
            printf("error=timeout\n");
            fflush(stdout);
            fprintf(stderr, "loadclient: timed out after %.0f s\n", opt_timeout);
            exit(3);
        }
        int n = epoll_wait(ep, evs, 256, 200);
        if (n < 0) { if (errno == EINTR) continue; fatal("epoll_wait: %s", strerror(errno)); }
        for (int i = 0; i < n && !finished; i++) {
            struct conn *c = evs[i].data.ptr;
            if (evs[i].events & EPOLLOUT) conn_flush(c);
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(c);
        }
    }
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p) {
    if (n == 0) return 0;
    size_t k = (size_t)(p / 100.0 * (double)n);
    if (k >= n) k = n - 1;
    return v[k];
}

/* ---------- create ---------- */
static char (*ids)[72];
static long ids_n, ids_cap;
static long issued, done_count, errors, next_index;
static double marks[1000];   /* create: when each 1,000th session was created */
static double t_start, t_end;

static int opt_post; /* create with POST /sessions instead of GET /mud */

static void create_next(struct conn *c) {
    if (issued >= opt_n) return;
    issued++;
    if (opt_post) conn_request(c, "POST", "/sessions");
    else conn_request(c, "GET", "/mud");
}

/* The id from a create answer: the body of GET /mud, or "id" of POST /sessions' JSON. */
static int parse_created(int status, const char *body, size_t len, char *out) {
    if (opt_post) {
        if (status != 201) return 0;
        const char *p = memmem(body, len, "\"id\"", 4);
        if (!p) return 0;
        p = memchr(p + 4, '"', (size_t)(body + len - (p + 4)));
        if (!p) return 0;
        p++;
        const char *q = memchr(p, '"', (size_t)(body + len - p));
        if (!q || q - p >= 70) return 0;
        memcpy(out, p, (size_t)(q - p));
        out[q - p] = 0;
        return 1;
    }
    if (status != 200 || len == 0 || len >= 70) return 0;
    memcpy(out, body, len);
    out[len] = 0;
    trim(out);
    return 1;
}

static void create_resp(struct conn *c, int status, const char *body, size_t len, long long next) {
    (void)next;
    if (parse_created(status, body, len, ids[ids_n])) {
        ids_n++;
        if (ids_n % 1000 == 0 && ids_n / 1000 <= 1000) marks[ids_n / 1000 - 1] = now_s();
    } else {
        errors++;
        issued--; /* try again */
        if (errors > 1000) fatal("too many failed creates (last status %d: %.*s)", status, (int)(len < 200 ? len : 200), body);
    }
    if (ids_n >= opt_n) { t_end = now_s(); finished = 1; return; }
    create_next(c);
}

static int mode_create(void) {
    if (!opt_o) fatal("create needs -o IDS_FILE");
    ids = calloc((size_t)opt_n, sizeof *ids);
    struct conn **cs = calloc((size_t)opt_c, sizeof *cs);
    for (long i = 0; i < opt_c; i++) cs[i] = conn_open((int)i, 0, create_resp);
    t_start = now_s();
    for (long i = 0; i < opt_c; i++) create_next(cs[i]);
    run_loop();
    double secs = t_end - t_start;
    FILE *f = fopen(opt_o, "w");
    if (!f) fatal("%s: %s", opt_o, strerror(errno));
    for (long i = 0; i < ids_n; i++) fprintf(f, "%s\n", ids[i]);
    fclose(f);
    printf("created=%ld seconds=%.4f rate=%.1f errors=%ld connections=%ld request=%s per1000=", ids_n, secs,
           (double)ids_n / secs, errors, opt_c, opt_post ? "POST_/sessions" : "GET_/mud");
    for (long k = 0; k < ids_n / 1000 && k < 1000; k++)   /* seconds since the start at every 1,000th session */
        printf("%s%.4f", k ? "," : "", marks[k] - t_start);
    printf("\n");
    return 0;
}

/* ---------- drain ---------- */
/* Stages per session: 0 reading the greeting, 1 posting "tag <index>" (-t 1), 2 reading the
 * upstream's "tagged <index>\r\n", 3 acknowledging everything read. */
struct dstate { long idx; long long cursor, want; int stage; };
static struct dstate *dst;
static int opt_tag; /* drain: also tag each session with its index in the ids file */

static void drain_next(struct conn *c) {
    struct dstate *d = &dst[c->owner];
    if (next_index >= ids_n) { d->idx = -1; return; }
    d->idx = next_index++;
    d->cursor = 0;
    d->want = opt_g;
    d->stage = 0;
    conn_request(c, "GET", "/sessions/%s?since=0&wait=5", ids[d->idx]);
}

static void drain_resp(struct conn *c, int status, const char *body, size_t len, long long next) {
    (void)body; (void)len;
    struct dstate *d = &dst[c->owner];
    if (d->stage == 1) {
        if (status != 204) fatal("drain: tag input answered %d for %s", status, ids[d->idx]);
        char reply[64];
        d->want = opt_g + snprintf(reply, sizeof reply, "tagged %ld\r\n", d->idx);
        d->stage = 2;
        conn_request(c, "GET", "/sessions/%s?since=%lld&wait=5", ids[d->idx], d->cursor);
        return;
    }
    if (status != 200) fatal("drain: status %d for %s", status, ids[d->idx]);
    if (d->stage == 0 || d->stage == 2) {
        d->cursor = next;
        if (d->cursor < d->want) {
            conn_request(c, "GET", "/sessions/%s?since=%lld&wait=5", ids[d->idx], d->cursor);
            return;
        }
        if (d->stage == 0 && opt_tag) {
            d->stage = 1;
            conn_request(c, "POST", "/sessions/%s/input?cmd=tag%%20%ld", ids[d->idx], d->idx);
            return;
        }
        d->stage = 3;
        conn_request(c, "GET", "/sessions/%s?since=%lld", ids[d->idx], d->cursor);
        return;
    }
    done_count++;
    if (done_count >= ids_n) { t_end = now_s(); finished = 1; return; }
    drain_next(c);
}

static void read_ids(void) {
    FILE *f = fopen(opt_i, "r");
    if (!f) fatal("%s: %s", opt_i, strerror(errno));
    char line[256];
    while (fgets(line, sizeof line, f)) {
        trim(line);
        if (!line[0]) continue;
        if (ids_n == ids_cap) { ids_cap = ids_cap ? ids_cap * 2 : 1024; ids = xrealloc(ids, (size_t)ids_cap * sizeof *ids); }
        snprintf(ids[ids_n++], sizeof ids[0], "%s", line);
    }
    fclose(f);
}

static int mode_drain(void) {
    if (!opt_i) fatal("drain needs -i IDS_FILE");
    read_ids();
    if (ids_n == 0 || (opt_g == 0 && !opt_tag)) { printf("drained=0 seconds=0\n"); return 0; }
    long nc = opt_c < ids_n ? opt_c : ids_n;
    dst = calloc((size_t)nc, sizeof *dst);
    struct conn **cs = calloc((size_t)nc, sizeof *cs);
    for (long i = 0; i < nc; i++) cs[i] = conn_open((int)i, 0, drain_resp);
    t_start = now_s();
    for (long i = 0; i < nc; i++) drain_next(cs[i]);
    run_loop();
    printf("drained=%ld tagged=%ld seconds=%.4f\n", done_count, opt_tag ? done_count : 0, t_end - t_start);
    return 0;
}

/* ---------- echo ---------- */
struct eclient {
    struct conn *a, *b;         /* a: creates, reads (long-polls); b: input */
    char id[72];
    long long cursor;
    int phase;                  /* 0 creating, 1 reading greeting, 2 ready, 3 in round, 4 done */
    long round;
    char expect[64];
    size_t expect_len, got;
    int a_done, b_done;
    double t0;
};
static struct eclient *ecl;
static long ready_count;
static double *lat;
static size_t lat_n;

static void echo_start_round(struct eclient *e, long i) {
    e->phase = 3;
    e->expect_len = (size_t)snprintf(e->expect, sizeof e->expect, "e%ldr%ld", i, e->round);
    e->got = 0;
    e->a_done = e->b_done = 0;
    conn_request(e->a, "GET", "/sessions/%s?since=%lld&wait=5", e->id, e->cursor);
    e->t0 = now_s();
    conn_request(e->b, "POST", "/sessions/%s/input?cmd=%s", e->id, e->expect);
    memcpy(e->expect + e->expect_len, "\r\n", 2);
    e->expect_len += 2;
}

static void echo_round_check(struct eclient *e, long i) {
    if (!(e->a_done && e->b_done)) return;
    e->round++;
    if (e->round >= opt_w + opt_m) {
        e->phase = 4;
        if (++done_count == opt_c) { t_end = now_s(); finished = 1; }
        return;
    }
    echo_start_round(e, i);
}

static void echo_resp(struct conn *c, int status, const char *body, size_t len, long long next) {
    long i = c->owner;
    struct eclient *e = &ecl[i];
    if (c->role == 1) {
        if (status != 204) fatal("echo: input answered %d: %.*s", status, (int)len, body);
        e->b_done = 1;
        echo_round_check(e, i);
        return;
    }
    if (e->phase == 0) {
        if (status != 200 || len == 0 || len >= 70) fatal("echo: create answered %d", status);
        memcpy(e->id, body, len);
        e->id[len] = 0;
        trim(e->id);
        e->cursor = 0;
        e->phase = 1;
    } else if (status != 200) {
        fatal("echo: read answered %d: %.*s", status, (int)len, body);
    } else if (e->phase == 1) {
        e->cursor = next;
    }
    if (e->phase == 1) {
        if (e->cursor < opt_g) {
            conn_request(c, "GET", "/sessions/%s?since=%lld&wait=5", e->id, e->cursor);
            return;
        }
        e->phase = 2;
        if (++ready_count == opt_c) {
            t_start = now_s();
            for (long k = 0; k < opt_c; k++) echo_start_round(&ecl[k], k);
        }
        return;
    }
    /* phase 3: long-poll answer */
    if (len > 0) {
        if (e->got + len > e->expect_len || memcmp(body, e->expect + e->got, len) != 0)
            fatal("echo: unexpected bytes for %s: %.*s", e->id, (int)len, body);
        e->got += len;
    }
    e->cursor = next;
    if (e->got < e->expect_len) {
        conn_request(c, "GET", "/sessions/%s?since=%lld&wait=5", e->id, e->cursor);
        return;
    }
    double t1 = now_s();
    if (e->round >= opt_w) lat[lat_n++] = t1 - e->t0;
    e->a_done = 1;
    echo_round_check(e, i);
}

static int mode_echo(void) {
    ecl = calloc((size_t)opt_c, sizeof *ecl);
    lat = calloc((size_t)(opt_c * opt_m), sizeof *lat);
    for (long i = 0; i < opt_c; i++) {
        ecl[i].a = conn_open((int)i, 0, echo_resp);
        ecl[i].b = conn_open((int)i, 1, echo_resp);
    }
    for (long i = 0; i < opt_c; i++) conn_request(ecl[i].a, "GET", "/mud");
    run_loop();
    qsort(lat, lat_n, sizeof *lat, cmp_double);
    double sum = 0;
    for (size_t k = 0; k < lat_n; k++) sum += lat[k];
    double secs = t_end - t_start;
    printf("clients=%ld roundtrips=%zu seconds=%.4f rate=%.1f mean_ms=%.4f p50_ms=%.4f p90_ms=%.4f p99_ms=%.4f max_ms=%.4f\n",
           opt_c, lat_n, secs, (double)(opt_c * (opt_m + opt_w)) / secs, lat_n ? sum / (double)lat_n * 1e3 : 0,
           pct(lat, lat_n, 50) * 1e3, pct(lat, lat_n, 90) * 1e3, pct(lat, lat_n, 99) * 1e3,
           lat_n ? lat[lat_n - 1] * 1e3 : 0);
    return 0;
}

/* ---------- flood ---------- */
struct fsess {
    struct conn *c;
    char id[72];
    long long cursor;
    int phase;   /* 0 creating, 1 greeting, 2 ready, 3 sent flood, 4 draining, 5 done */
    long long mismatches;
    long polls;
};
static struct fsess *fs;
#define PATCHUNK 65536
static char patbuf[PATCHUNK + 64];   /* patbuf + (i % 64) holds the pattern from flood byte i on */
static long long total_bytes, total_mismatches, total_polls;

static void flood_poll(struct fsess *f) {
    f->polls++;
    conn_request(f->c, "GET", "/sessions/%s?since=%lld&wait=5", f->id, f->cursor);
}

static void flood_resp(struct conn *c, int status, const char *body, size_t len, long long next) {
    struct fsess *f = &fs[c->owner];
    switch (f->phase) {
    case 0:
        if (status != 200 || len == 0 || len >= 70) fatal("flood: create answered %d", status);
        memcpy(f->id, body, len);
        f->id[len] = 0;
        trim(f->id);
        f->phase = 1;
        f->cursor = 0;
        break;
    case 1:
        if (status != 200) fatal("flood: greeting read answered %d", status);
        f->cursor = next;
        break;
    case 3:
        if (status != 204) fatal("flood: input answered %d: %.*s", status, (int)len, body);
        f->phase = 4;
        flood_poll(f);
        return;
    case 4: {
        if (status != 200) fatal("flood: read answered %d: %.*s", status, (int)len, body);
        if (next != f->cursor + (long long)len) fatal("flood: X-Next-Offset %lld != %lld + %zu", next, f->cursor, len);
        long long base = f->cursor - opt_g;
        for (size_t k = 0; k < len;) {
            size_t chunk = len - k < PATCHUNK ? len - k : PATCHUNK;
            const char *want = patbuf + (base + (long long)k) % 64;
            if (memcmp(body + k, want, chunk) != 0)
                for (size_t j = 0; j < chunk; j++)
                    if (body[k + j] != want[j]) f->mismatches++;
            k += chunk;
        }
        f->cursor = next;
        total_bytes += (long long)len;
        if (f->cursor - opt_g >= opt_b) {
            f->phase = 5;
            total_mismatches += f->mismatches;
            total_polls += f->polls;
            if (++done_count == opt_s) { t_end = now_s(); finished = 1; }
            return;
        }
        flood_poll(f);
        return;
    }
    default:
        fatal("flood: unexpected response %d in phase %d", status, f->phase);
    }
    if (f->phase == 1) {
        if (f->cursor < opt_g) {
            conn_request(c, "GET", "/sessions/%s?since=%lld&wait=5", f->id, f->cursor);
            return;
        }
        f->phase = 2;
        if (++ready_count == opt_s) {
            t_start = now_s();
            for (long k = 0; k < opt_s; k++) {
                fs[k].phase = 3;
                conn_request(fs[k].c, "POST", "/sessions/%s/input?cmd=flood%%20%lld", fs[k].id, opt_b);
            }
        }
    }
}

static int mode_flood(void) {
    for (size_t k = 0; k < sizeof patbuf; k++) patbuf[k] = PATTERN[k % 64];
    fs = calloc((size_t)opt_s, sizeof *fs);
    for (long i = 0; i < opt_s; i++) fs[i].c = conn_open((int)i, 0, flood_resp);
    for (long i = 0; i < opt_s; i++) conn_request(fs[i].c, "GET", "/mud");
    run_loop();
    double secs = t_end - t_start;
    long long expected = opt_s * opt_b;
    int ok = total_bytes == expected && total_mismatches == 0;
    printf("sessions=%ld bytes=%lld expected=%lld mismatches=%lld polls=%lld seconds=%.4f mbps=%.2f verified=%s\n",
           opt_s, total_bytes, expected, total_mismatches, total_polls, secs, (double)total_bytes / 1e6 / secs,
           ok ? "yes" : "no");
    return ok ? 0 : 1;
}

/* ---------- hold ---------- */
/* One connection per session in the ids file, each holding one request: an SSE stream
 * (GET /sessions/{id}/events, held once its response head is read) or a long-poll
 * (GET /sessions/{id}?wait=60, held as soon as it is sent). Then commands on stdin, one a line:
 *   broadcast   POST "broadcast <k>" (k = 1, 2, ...: this client's count) to the first session's
 *               input (the bench upstream then sends BROADCAST_FMT, with the session's index as its
 *               tag, to every tagged session: see drain -t) and wait until every held request got exactly its line; a long-poll
 *               client sends its next long-poll as soon as it has its answer, as a real one does
 *   close       close every connection and exit (so does end of input)
 * Sessions must have been drained with -t 1 (greeting of G bytes, then "tagged <index>\r\n"
 * read and acknowledged, nothing sent since), and be the only ones tagged on their upstream. */
#define BROADCAST_FMT "%ld: broadcast %ld, one line of about the length a MUD sends to every player\r\n"

struct hconn {
    int fd;
    int state;            /* 0 sent (sse: head not read yet), 1 held, 2 got its line */
    char *buf;
    size_t len, cap;
    long long base;       /* offset before the current broadcast's line */
    long long last_id;    /* sse: the last event's id */
    size_t got;           /* bytes of the expected line (escaped as JSON, for sse) matched */
    double t;             /* when the line was complete */
};
static struct hconn *hc;
static long hn, held_count, delivered_count;
static long broadcast_no, events_seen, repolls, mismatches, unexpected, comments;
static int opt_sse = -1;  /* -k sse | poll */
static int broadcasting, trigger_done;

static size_t expected_line(long idx, char *out, size_t cap, int escaped) {
    char raw[256];
    int n = snprintf(raw, sizeof raw, BROADCAST_FMT, idx, broadcast_no);
    if (!escaped) { memcpy(out, raw, (size_t)n); return (size_t)n; }
    size_t k = 0;
    for (int i = 0; i < n && k + 2 < cap; i++) {
        if (raw[i] == '\r') { out[k++] = '\\'; out[k++] = 'r'; }
        else if (raw[i] == '\n') { out[k++] = '\\'; out[k++] = 'n'; }
        else out[k++] = raw[i];
    }
    return k;
}

static void hold_send(long i, const char *fmt, ...) {
    char req[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(req, sizeof req, fmt, ap);
    va_end(ap);
    /* A few hundred bytes on an idle connection: the kernel takes them at once. */
    ssize_t w = send(hc[i].fd, req, (size_t)n, MSG_NOSIGNAL);
    if (w != n) fatal("hold: send to %s: %s", ids[i], w < 0 ? strerror(errno) : "short write");
}

static void hold_line_done(long i) {
    struct hconn *h = &hc[i];
    h->state = 2;
    h->t = now_s();
    delivered_count++;
}

/* Parses what a stream sent: the head, then events (blocks ending in a blank line). */
static void hold_parse_sse(long i) {
    struct hconn *h = &hc[i];
    if (h->state == 0) {
        char *end = memmem(h->buf, h->len, "\r\n\r\n", 4);
        if (!end) return;
        size_t hlen = (size_t)(end - h->buf) + 4;
        if (strncmp(h->buf, "HTTP/1.1 200", 12) != 0 || !memmem(h->buf, hlen, "text/event-stream", 17))
            fatal("hold: stream of %s answered: %.*s", ids[i], (int)hlen, h->buf);
        memmove(h->buf, h->buf + hlen, h->len - hlen);
        h->len -= hlen;
        h->state = 1;
        held_count++;
    }
    for (;;) {
        char *end = memmem(h->buf, h->len, "\n\n", 2);
        if (!end) return;
        size_t blen = (size_t)(end - h->buf) + 2;
        const char *data = NULL;
        size_t dlen = 0;
        long long id = -1;
        for (char *p = h->buf; p < end;) {
            char *eol = memchr(p, '\n', (size_t)(end + 1 - p));
            size_t n = (size_t)(eol - p);
            if (n > 0 && p[0] == ':') comments++;
            else if (n > 4 && !strncmp(p, "id: ", 4)) id = atoll(p + 4);
            else if (n > 6 && !strncmp(p, "data: ", 6)) { data = p + 6; dlen = n - 6; }
            else if (n > 7 && !strncmp(p, "event: ", 7)) fatal("hold: stream of %s ended: %.*s", ids[i], (int)(end - p), p);
            p = eol + 1;
        }
        if (data) {
            events_seen++;
            char want[512];
            size_t wlen = expected_line(i, want, sizeof want, 1);
            if (!broadcasting || h->state != 1) {
                if (unexpected++ < 5) fprintf(stderr, "loadclient: unexpected event for %s: %.*s\n", ids[i], (int)dlen, data);
            } else if (dlen < 2 || data[0] != '"' || data[dlen - 1] != '"' || h->got + dlen - 2 > wlen ||
                       memcmp(want + h->got, data + 1, dlen - 2) != 0) {
                if (mismatches++ < 5) fprintf(stderr, "loadclient: wrong event for %s: %.*s\n", ids[i], (int)dlen, data);
            } else {
                h->got += dlen - 2;
                h->last_id = id;
                if (h->got == wlen) {
                    if (id != h->base + (long long)expected_line(i, want, sizeof want, 0)) {
                        if (mismatches++ < 5) fprintf(stderr, "loadclient: %s: id %lld, expected %lld\n", ids[i], id,
                                                      h->base + (long long)expected_line(i, want, sizeof want, 0));
                    }
                    h->base = id;
                    hold_line_done(i);
                }
            }
        }
        memmove(h->buf, h->buf + blen, h->len - blen);
        h->len -= blen;
    }
}

static long long header_ll(const char *head, size_t hlen, const char *name) {
    size_t n = strlen(name);
    for (const char *p = head; p && p + n < head + hlen; p = memchr(p, '\n', (size_t)(head + hlen - p))) {
        if (*p == '\n') p++;
        if (!strncasecmp(p, name, n)) return atoll(p + n);
    }
    return -1;
}

/* Parses a long-poll's answer (Content-Length framed). */
static void hold_parse_poll(long i) {
    struct hconn *h = &hc[i];
    for (;;) {
        char *end = memmem(h->buf, h->len, "\r\n\r\n", 4);
        if (!end) return;
        size_t hlen = (size_t)(end - h->buf) + 4;
        long long clen = header_ll(h->buf, hlen, "content-length:");
        if (clen < 0) fatal("hold: answer without Content-Length for %s", ids[i]);
        if (h->len < hlen + (size_t)clen) return;
        int status = atoi(h->buf + 9);
        const char *body = h->buf + hlen;
        if (!broadcasting || h->state != 1 || status != 200) {
            if (status != 200 || clen == 0)
                fatal("hold: long-poll of %s answered %d with %lld bytes%s", ids[i], status, clen,
                      broadcasting ? "" : " before any broadcast");
            if (unexpected++ < 5) fprintf(stderr, "loadclient: unexpected answer for %s: %.*s\n", ids[i], (int)clen, body);
        } else {
            char want[512];
            size_t wlen = expected_line(i, want, sizeof want, 0);
            long long offset = header_ll(h->buf, hlen, "x-offset:");
            long long next = header_ll(h->buf, hlen, "x-next-offset:");
            if (clen == 0) fatal("hold: long-poll of %s answered empty (wait ran out?)", ids[i]);
            if (offset != h->base + (long long)h->got || next != offset + clen || h->got + (size_t)clen > wlen ||
                memcmp(want + h->got, body, (size_t)clen) != 0) {
                if (mismatches++ < 5) fprintf(stderr, "loadclient: wrong answer for %s at %lld: %.*s\n", ids[i], offset, (int)clen, body);
                h->got = wlen;  /* count it once; do not wait for more */
            } else {
                h->got += (size_t)clen;
            }
            if (h->got == wlen) {
                h->base += (long long)wlen;
                hold_line_done(i);
            } else {
                repolls++;
            }
            /* The next long-poll (or the rest of this line): at once, as a client does. */
            hold_send(i, "GET /sessions/%s?since=%lld&wait=60 HTTP/1.1\r\nHost: localhost\r\n\r\n", ids[i], next);
        }
        memmove(h->buf, h->buf + hlen + clen, h->len - hlen - (size_t)clen);
        h->len -= hlen + (size_t)clen;
    }
}

static void hold_readable(long i) {
    struct hconn *h = &hc[i];
    for (;;) {
        if (h->cap - h->len < 512) {
            h->cap = h->cap ? h->cap * 2 : 1024;
            h->buf = xrealloc(h->buf, h->cap);
        }
        ssize_t r = recv(h->fd, h->buf + h->len, h->cap - h->len - 1, 0);
        if (r == 0) fatal("hold: the proxy closed the connection of %s", ids[i]);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return;
            fatal("hold: recv: %s", strerror(errno));
        }
        h->len += (size_t)r;
        h->buf[h->len] = 0;
        if (opt_sse) hold_parse_sse(i); else hold_parse_poll(i);
    }
}

static int hep;  /* the held connections' epoll; ep (the trigger connection's) is one of its fds */

/* Runs until done() says so (done given) or until `until` (a monotonic time; 0: one pass
 * over what is ready now). */
static void hold_loop(double until, int (*done)(void)) {
    struct epoll_event evs[256];
    for (;;) {
        if (done && done()) return;
        double t = now_s();
        if (t > deadline) {
            printf("error=timeout held=%ld delivered=%ld\n", held_count, delivered_count);
            fflush(stdout);
            fprintf(stderr, "loadclient: timed out after %.0f s\n", opt_timeout);
            exit(3);
        }
        int ms = until > t ? (int)((until - t) * 1000) + 1 : 0;
        int n = epoll_wait(hep, evs, 256, ms < 200 ? ms : 200);
        if (n < 0) { if (errno == EINTR) continue; fatal("epoll_wait: %s", strerror(errno)); }
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 == UINT64_MAX) {  /* the trigger connection */
                struct epoll_event tev[4];
                int m = epoll_wait(ep, tev, 4, 0);
                for (int j = 0; j < m; j++) {
                    struct conn *c = tev[j].data.ptr;
                    if (tev[j].events & EPOLLOUT) conn_flush(c);
                    if (tev[j].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) conn_readable(c);
                }
                continue;
            }
            hold_readable((long)evs[k].data.u64);
        }
        if (!done && now_s() >= until) return;
    }
}

static int all_held(void) { return held_count >= hn; }
static int all_delivered(void) { return trigger_done && delivered_count >= hn; }

static void trigger_resp(struct conn *c, int status, const char *body, size_t len, long long next) {
    (void)c; (void)next;
    if (status != 204) fatal("hold: broadcast input answered %d: %.*s", status, (int)len, body);
    trigger_done = 1;
}

static int mode_hold(void) {
    if (!opt_i || opt_sse < 0) fatal("hold needs -i IDS_FILE and -k sse|poll");
    read_ids();
    hn = ids_n;
    if (hn == 0) fatal("hold: no ids in %s", opt_i);
    hc = calloc((size_t)hn, sizeof *hc);
    hep = epoll_create1(EPOLL_CLOEXEC);
    if (hep < 0) fatal("epoll_create1: %s", strerror(errno));
    struct epoll_event tev = { .events = EPOLLIN, .data.u64 = UINT64_MAX };
    if (epoll_ctl(hep, EPOLL_CTL_ADD, ep, &tev) < 0) fatal("epoll_ctl: %s", strerror(errno));
    struct conn *trigger = conn_open(0, 0, trigger_resp);
    char tagged[64];
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &sin.sin_addr) != 1) fatal("bad host %s", host);
    double t0 = now_s();
    for (long i = 0; i < hn; i++) {
        struct hconn *h = &hc[i];
        h->base = opt_g + snprintf(tagged, sizeof tagged, "tagged %ld\r\n", i);
        h->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (h->fd < 0) fatal("socket: %s", strerror(errno));
        if (connect(h->fd, (struct sockaddr *)&sin, sizeof sin) < 0) fatal("connect: %s", strerror(errno));
        int one = 1;
        setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(h->fd, F_SETFL, fcntl(h->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)i };
        if (epoll_ctl(hep, EPOLL_CTL_ADD, h->fd, &ev) < 0) fatal("epoll_ctl: %s", strerror(errno));
        if (opt_sse) {
            hold_send(i, "GET /sessions/%s/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n", ids[i]);
        } else {
            hold_send(i, "GET /sessions/%s?wait=60 HTTP/1.1\r\nHost: localhost\r\n\r\n", ids[i]);
            h->state = 1;
            held_count++;
        }
        if (i % 256 == 255) hold_loop(0, NULL);  /* read the heads that came meanwhile */
        /* At most 512 streams waiting for their head, so that a burst of connects cannot fill
         * the proxy's accept queue (1024): a dropped SYN would cost a second. */
        while (opt_sse && i + 1 - held_count >= 512) hold_loop(now_s() + 0.001, NULL);
    }
    hold_loop(deadline, all_held);
    printf("held=%ld kind=%s open_seconds=%.4f\n", held_count, opt_sse ? "sse" : "poll", now_s() - t0);
    fflush(stdout);

    char cmd[64];
    double *times = calloc((size_t)hn, sizeof *times);
    while (fgets(cmd, sizeof cmd, stdin)) {
        trim(cmd);
        if (!strcmp(cmd, "close")) break;
        if (strcmp(cmd, "broadcast") != 0) fatal("hold: unknown command '%s'", cmd);
        broadcast_no++;
        delivered_count = events_seen = repolls = mismatches = unexpected = 0;
        for (long i = 0; i < hn; i++) { hc[i].state = 1; hc[i].got = 0; }
        broadcasting = 1;
        trigger_done = 0;
        double tb = now_s();
        conn_request(trigger, "POST", "/sessions/%s/input?cmd=broadcast%%20%ld", ids[0], broadcast_no);
        hold_loop(deadline, all_delivered);
        double te = now_s();
        hold_loop(now_s() + 0.1, NULL);  /* anything more than its line would show up here */
        broadcasting = 0;
        for (long i = 0; i < hn; i++) times[i] = hc[i].t - tb;
        qsort(times, (size_t)hn, sizeof *times, cmp_double);
        int ok = delivered_count == hn && mismatches == 0 && unexpected == 0;
        printf("broadcast=%ld delivered=%ld expected=%ld seconds=%.4f first_ms=%.3f p50_ms=%.3f p99_ms=%.3f "
               "max_ms=%.3f events=%ld repolls=%ld mismatches=%ld unexpected=%ld comments=%ld verified=%s\n",
               broadcast_no, delivered_count, hn, te - tb, times[0] * 1e3, pct(times, (size_t)hn, 50) * 1e3,
               pct(times, (size_t)hn, 99) * 1e3, times[hn - 1] * 1e3, events_seen, repolls, mismatches, unexpected,
               comments, ok ? "yes" : "no");
        fflush(stdout);
    }
    for (long i = 0; i < hn; i++) close(hc[i].fd);
    printf("closed=%ld\n", hn);
    return 0;
}

/* ---------- main ---------- */
int main(int argc, char **argv) {
    if (argc < 2) fatal("usage: loadclient create|drain|echo|flood|hold [options]");
    const char *mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) fatal("missing value for %s", a);
        const char *v = argv[++i];
        if (!strcmp(a, "-h")) host = v;
        else if (!strcmp(a, "-p")) port = atoi(v);
        else if (!strcmp(a, "-n")) opt_n = atol(v);
        else if (!strcmp(a, "-c")) opt_c = atol(v);
        else if (!strcmp(a, "-m")) opt_m = atol(v);
        else if (!strcmp(a, "-g")) opt_g = atol(v);
        else if (!strcmp(a, "-W")) opt_w = atol(v);
        else if (!strcmp(a, "-s")) opt_s = atol(v);
        else if (!strcmp(a, "-b")) opt_b = atoll(v);
        else if (!strcmp(a, "-o")) opt_o = v;
        else if (!strcmp(a, "-i")) opt_i = v;
        else if (!strcmp(a, "-T")) opt_timeout = atof(v);
        else if (!strcmp(a, "-P")) opt_post = atoi(v);
        else if (!strcmp(a, "-t")) opt_tag = atoi(v);
        else if (!strcmp(a, "-k")) opt_sse = !strcmp(v, "sse") ? 1 : !strcmp(v, "poll") ? 0 : -1;
        else fatal("unknown option %s", a);
    }
    if (port <= 0) fatal("-p PORT is required");
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) fatal("epoll_create1: %s", strerror(errno));
    deadline = now_s() + opt_timeout;
    if (!strcmp(mode, "create")) return mode_create();
    if (!strcmp(mode, "drain")) return mode_drain();
    if (!strcmp(mode, "echo")) return mode_echo();
    if (!strcmp(mode, "flood")) return mode_flood();
    if (!strcmp(mode, "hold")) return mode_hold();
    fatal("unknown mode %s", mode);
    return 2;
}
