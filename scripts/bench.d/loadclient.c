/*
 * Load client for scripts/bench: one thread, epoll, keep-alive HTTP/1.1 connections to uvproxyd.
 *
 *   loadclient create -p PORT -n N -c C -o IDS_FILE [-P 1]   create N sessions (GET /mud, or
 *                                                            POST /sessions with -P 1) over C
 *                                                            connections; prints rate, writes ids
 *   loadclient drain  -p PORT -i IDS_FILE -c C -g G          read the G-byte greeting of every
 *                                                            session (since=0&wait=5), then ack it
 *                                                            (a read at since=G)
 *   loadclient echo   -p PORT -c C -m M -g G [-W WARMUP]     C clients, each its own session and two
 *                                                            connections (a long-poll held with
 *                                                            since, and one for input); M timed
 *                                                            round trips each; prints p50/p99/max
 *   loadclient flood  -p PORT -s S -b BYTES -g G             S sessions each send "flood BYTES",
 *                                                            drained with since=N&wait=5; every byte
 *                                                            is checked against the pattern
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
        n = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n", target);
    else
        n = snprintf(req, sizeof req, "%s %s HTTP/1.1\r\nHost: bench\r\n\r\n", method, target);
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
struct dstate { long idx; long long cursor; int acking; };
static struct dstate *dst;

static void drain_next(struct conn *c) {
    struct dstate *d = &dst[c->owner];
    if (next_index >= ids_n) { d->idx = -1; return; }
    d->idx = next_index++;
    d->cursor = 0;
    d->acking = 0;
    conn_request(c, "GET", "/sessions/%s?since=0&wait=5", ids[d->idx]);
}

static void drain_resp(struct conn *c, int status, const char *body, size_t len, long long next) {
    (void)body; (void)len;
    struct dstate *d = &dst[c->owner];
    if (status != 200) fatal("drain: status %d for %s", status, ids[d->idx]);
    if (!d->acking) {
        d->cursor = next;
        if (d->cursor < opt_g) {
            conn_request(c, "GET", "/sessions/%s?since=%lld&wait=5", ids[d->idx], d->cursor);
            return;
        }
        d->acking = 1;
        conn_request(c, "GET", "/sessions/%s?since=%lld", ids[d->idx], d->cursor);
        return;
    }
    done_count++;
    if (done_count >= ids_n) { t_end = now_s(); finished = 1; return; }
    drain_next(c);
}

static int mode_drain(void) {
    if (!opt_i) fatal("drain needs -i IDS_FILE");
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
    if (ids_n == 0 || opt_g == 0) { printf("drained=0 seconds=0\n"); return 0; }
    long nc = opt_c < ids_n ? opt_c : ids_n;
    dst = calloc((size_t)nc, sizeof *dst);
    struct conn **cs = calloc((size_t)nc, sizeof *cs);
    for (long i = 0; i < nc; i++) cs[i] = conn_open((int)i, 0, drain_resp);
    t_start = now_s();
    for (long i = 0; i < nc; i++) drain_next(cs[i]);
    run_loop();
    printf("drained=%ld seconds=%.4f\n", done_count, t_end - t_start);
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

/* ---------- main ---------- */
int main(int argc, char **argv) {
    if (argc < 2) fatal("usage: loadclient create|drain|echo|flood [options]");
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
    fatal("unknown mode %s", mode);
    return 2;
}
