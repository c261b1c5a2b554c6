/*
 * loadgen: MQTT 3.1.1 / 5.0 load generator for the twisted_mqtt benchmark suite.
 *
 * Raw non-blocking sockets and epoll; packets are encoded by hand and what comes back is decoded
 * incrementally.  Connection setup (CONNECT/CONNACK, SUBSCRIBE/SUBACK) is done synchronously
 * before the measured phase; during the measured phase publishers and subscribers run in one
 * thread per role (stream, qos1, fanout) or all in one thread (reqresp, idle).
 *
 * Every PUBLISH payload starts with: u64 sequence number, u64 send time (CLOCK_MONOTONIC ns),
 * u32 publisher index, u32 magic; the rest is padding up to --payload bytes.  Subscribers count
 * delivered, lost (sent but never received) and duplicate (sequence number not above the last
 * one seen from that publisher) messages and the latency distribution.
 *
 * Scenarios:
 *   stream   1 publisher -> 1 subscriber, QoS 0, publisher pipelines as fast as the socket takes.
 *   qos1     10 publishers -> 10 subscribers, subscriber i subscribes to publisher i's topic
 *            (10 independent pairs), QoS 1 both ways, up to --window unacknowledged PUBLISH per
 *            publisher (also bounded by the broker's Receive Maximum in v5); subscribers PUBACK.
 *   fanout   1 publisher -> 100 subscribers of the same topic, QoS 0.
 *   reqresp  50 devices: device i publishes QoS 1 on req/i and waits for the answer on resp/i
 *            (one request in flight each); one responder subscribed to req/+ answers on resp/i.
 *            Latency is the round trip; delivered counts both deliveries (2 per round trip).
 *   reqresp-pairs  as reqresp, but device i has its own responder, subscribed to req/i only:
 *            every connection carries one request or one answer at a time, so the broker's
 *            reads hold one packet (the responder's PUBACK and answer go out in one write).
 *   (--persistent: the subscribers of stream, qos1 and fanout connect with a persistent
 *   session, clean session 0 / clean start 0 with a session expiry of an hour, so that a broker
 *   with a store writes their messages.)
 *   idle     open --conns connections (keepalive 600), one PINGREQ each, hold them, and report
 *            the broker's RSS growth per connection (--broker-pid).
 *
 * Output: one JSON line on stdout.  Diagnostics on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x4d515454u /* "MQTT" */
#define HDR_LEN 24
#define READ_CHUNK (256 * 1024)
#define PUB_BATCH (64 * 1024)

enum { R_PUB, R_SUB, R_DEV, R_RESP, R_IDLE };

/* ---------------------------------------------------------------- options */
static const char *o_host = "127.0.0.1";
static int o_port = 1883;
static const char *o_scenario = "stream";
static int o_proto = 4;
static double o_duration = 5.0;
static uint64_t o_messages = 0; /* per publisher, 0 = until --duration */
static int o_payload = 64;
static int o_window = 100;      /* qos1: unacknowledged PUBLISH per publisher */
static int o_qos0_window = 0;   /* stream/fanout: 0 = only socket back-pressure */
static int o_pubs = -1, o_subs = -1, o_devices = 50, o_conns = 10000;
static int o_think_us = 0;
static int o_keepalive = 600;
static int o_broker_pid = 0;
static double o_hold = 2.0;
static double o_drain = 3.0;
static int o_quickack = 0;
static int o_persistent = 0;    /* stream/qos1/fanout: subscribers keep a persistent session */
static int o_sub_ports[16];     /* --sub-port P[,P...]: subscribers and responders connect to */
static int o_nsub_ports = 0;    /* these ports in turn (other nodes of a cluster) */
static int o_sources = 0;       /* --sources N: connections from 127.0.0.1 .. 127.0.0.N in turn */
static double o_settle = 0.0;   /* --settle S: pause between subscribing and publishing */
static unsigned g_connects = 0;
static int g_persist_next = 0;  /* the next CONNECT asks for a persistent session */

/* ---------------------------------------------------------------- utilities */
static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "loadgen: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

typedef struct { uint8_t *p; size_t len, cap; } buf_t;

static uint8_t *breserve(buf_t *b, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) die("out of memory");
        b->cap = cap;
    }
    return b->p + b->len;
}

static void bconsume(buf_t *b, size_t n) {
    if (n >= b->len) { b->len = 0; return; }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static size_t enc_varint(uint8_t *p, uint32_t v) {
    size_t n = 0;
    do {
        uint8_t d = v & 0x7f;
        v >>= 7;
        if (v) d |= 0x80;
        p[n++] = d;
    } while (v);
    return n;
}

/* Returns bytes used, 0 if incomplete, -1 if malformed. */
static int dec_varint(const uint8_t *p, size_t avail, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        if ((size_t)i >= avail) return 0;
        v |= (uint32_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) { *out = v; return i + 1; }
    }
    return -1;
}

static inline void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

/* ---------------------------------------------------------------- latency histogram */
#define HBUCKETS 2048
typedef struct { uint64_t c[HBUCKETS]; uint64_t n; uint64_t max; } hist_t;

static inline void hadd(hist_t *h, uint64_t v) {
    int idx;
    if (v < 32) idx = (int)v;
    else {
        int e = 63 - __builtin_clzll(v);
        idx = 32 + (e - 5) * 32 + (int)((v >> (e - 5)) - 32);
    }
    h->c[idx]++;
    h->n++;
    if (v > h->max) h->max = v;
}

static uint64_t hvalue(int idx) {
    if (idx < 32) return (uint64_t)idx;
    int e = (idx - 32) / 32 + 5, sub = (idx - 32) % 32;
    uint64_t lo = (uint64_t)(32 + sub) << (e - 5);
    return lo + ((1ull << (e - 5)) >> 1);
}

static double hpct(const hist_t *h, double p) {
    if (!h->n) return -1;
    uint64_t rank = (uint64_t)(p * (double)h->n + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t acc = 0;
    for (int i = 0; i < HBUCKETS; i++) {
        acc += h->c[i];
        if (acc >= rank) return (double)hvalue(i);
    }
    return (double)h->max;
}

/* ---------------------------------------------------------------- connections */
typedef struct conn {
    int fd, role, idx;
    int closed;
    uint32_t events;
    buf_t r, w;
    char topic[64];
    int topic_len;
    uint16_t srv_recv_max;
    /* publisher / device */
    uint64_t seq, sent, acked;
    uint32_t inflight;
    uint16_t next_id;
    uint8_t *ids; /* in-flight packet id bitmap (65536 bits) */
    int waiting;  /* device: request outstanding */
    uint64_t next_at; /* device: think time */
    /* subscriber */
    uint64_t *next_seq, *uniq; /* per publisher index */
    uint64_t recv, dup;
    _Atomic uint64_t progress; /* highest seq + 1 seen from publisher 0 (qos0 window) */
    /* responder */
    buf_t pending; /* queued answers: u32 device index + payload */
    size_t pending_off;
    uint32_t pending_n;
} conn_t;

static int g_npubs;
static conn_t *g_pubs, *g_subs;
static int g_nsubs;
static atomic_int g_subs_ready, g_pub_done, g_stop;
static uint64_t g_t_start, g_deadline;
static atomic_uint_fast64_t g_disconnects, g_errors;
static uint8_t g_pad[65536];

static void set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void bind_source(int fd) {
    /* --sources: a loopback source address per connection in turn, so that more connections
     * than one address has ephemeral ports can reach one broker port */
    if (!o_sources) return;
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {0};
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000001u + (g_connects++ % (unsigned)o_sources));
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0) die("bind: %s", strerror(errno));
}

static int tcp_connect_to(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    bind_source(fd);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, o_host, &sa.sin_addr) != 1) die("bad host %s", o_host);
    for (int attempt = 0;; attempt++) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
        if (attempt >= 20) die("connect: %s", strerror(errno));
        usleep(50000);
        close(fd);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        bind_source(fd);
    }
}

static int tcp_connect(void) { return tcp_connect_to(o_port); }

/* ---- encoders (append to c->w) */
static void enc_connect(conn_t *c, const char *cid, uint16_t keepalive) {
    size_t cl = strlen(cid);
    int persist = g_persist_next;
    uint32_t rem = 10 + (o_proto == 5 ? 1 : 0) + (o_proto == 5 && persist ? 5 : 0) + 2 +
                   (uint32_t)cl;
    uint8_t *p = breserve(&c->w, rem + 5), *s = p;
    *p++ = 0x10;
    p += enc_varint(p, rem);
    memcpy(p, "\0\4MQTT", 6); p += 6;
    *p++ = (uint8_t)o_proto;
    *p++ = persist ? 0x00 : 0x02; /* clean session / clean start, unless persistent */
    put16(p, keepalive); p += 2;
    if (o_proto == 5 && persist) { /* Session Expiry Interval 3600 s */
        *p++ = 5; *p++ = 0x11; *p++ = 0; *p++ = 0; *p++ = 0x0e; *p++ = 0x10;
    } else if (o_proto == 5) *p++ = 0; /* no properties */
    put16(p, (uint16_t)cl); p += 2;
    memcpy(p, cid, cl); p += cl;
    c->w.len += (size_t)(p - s);
}

static void enc_subscribe(conn_t *c, uint16_t pid, const char *filter, int qos) {
    size_t fl = strlen(filter);
    uint32_t rem = 2 + (o_proto == 5 ? 1 : 0) + 2 + (uint32_t)fl + 1;
    uint8_t *p = breserve(&c->w, rem + 5), *s = p;
    *p++ = 0x82;
    p += enc_varint(p, rem);
    put16(p, pid); p += 2;
    if (o_proto == 5) *p++ = 0;
    put16(p, (uint16_t)fl); p += 2;
    memcpy(p, filter, fl); p += fl;
    *p++ = (uint8_t)qos;
    c->w.len += (size_t)(p - s);
}

static void enc_publish(conn_t *c, const char *topic, int tl, int qos, uint16_t pid,
                        const uint8_t *hdr, int plen) {
    uint32_t rem = 2 + (uint32_t)tl + (qos ? 2 : 0) + (o_proto == 5 ? 1 : 0) + (uint32_t)plen;
    uint8_t *p = breserve(&c->w, rem + 5), *s = p;
    *p++ = (uint8_t)(0x30 | (qos << 1));
    p += enc_varint(p, rem);
    put16(p, (uint16_t)tl); p += 2;
    memcpy(p, topic, (size_t)tl); p += tl;
    if (qos) { put16(p, pid); p += 2; }
    if (o_proto == 5) *p++ = 0;
    memcpy(p, hdr, HDR_LEN);
    if (plen > HDR_LEN) memcpy(p + HDR_LEN, g_pad, (size_t)(plen - HDR_LEN));
    p += plen;
    c->w.len += (size_t)(p - s);
}

static void enc_puback(conn_t *c, uint16_t pid) {
    uint8_t *p = breserve(&c->w, 4);
    p[0] = 0x40; p[1] = 2; put16(p + 2, pid);
    c->w.len += 4;
}

static void enc_simple(conn_t *c, uint8_t b0) {
    uint8_t *p = breserve(&c->w, 2);
    p[0] = b0; p[1] = 0;
    c->w.len += 2;
}

static void make_hdr(uint8_t *h, uint64_t seq, uint64_t ts, uint32_t pub) {
    memcpy(h, &seq, 8); memcpy(h + 8, &ts, 8); memcpy(h + 16, &pub, 4);
    uint32_t m = MAGIC;
    memcpy(h + 20, &m, 4);
}

static uint16_t alloc_id(conn_t *c) {
    for (;;) {
        uint16_t id = ++c->next_id;
        if (!id) continue;
        if (!(c->ids[id >> 3] & (1 << (id & 7)))) {
            c->ids[id >> 3] |= (uint8_t)(1 << (id & 7));
            return id;
        }
    }
}

static int release_id(conn_t *c, uint16_t id) {
    if (!(c->ids[id >> 3] & (1 << (id & 7)))) return 0;
    c->ids[id >> 3] &= (uint8_t)~(1 << (id & 7));
    return 1;
}

/* ---- blocking I/O for setup */
static void flush_blocking(conn_t *c) {
    size_t off = 0;
    while (off < c->w.len) {
        ssize_t n = send(c->fd, c->w.p + off, c->w.len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("send during setup: %s", strerror(errno));
        }
        off += (size_t)n;
    }
    c->w.len = 0;
}

/* Read one whole packet (blocking); returns first byte, sets body and len (valid until the next read). */
static uint8_t read_packet_blocking(conn_t *c, const uint8_t **body, uint32_t *len,
                                    size_t *consumed) {
    if (*consumed) { bconsume(&c->r, *consumed); *consumed = 0; }
    for (;;) {
        if (c->r.len >= 2) {
            uint32_t rem;
            int vl = dec_varint(c->r.p + 1, c->r.len - 1, &rem);
            if (vl < 0) die("malformed packet during setup");
            if (vl > 0 && c->r.len >= 1 + (size_t)vl + rem) {
                *body = c->r.p + 1 + vl;
                *len = rem;
                *consumed = 1 + (size_t)vl + rem;
                return c->r.p[0];
            }
        }
        uint8_t *p = breserve(&c->r, 4096);
        ssize_t n = recv(c->fd, p, 4096, 0);
        if (n == 0) die("broker closed the connection during setup");
        if (n < 0) {
            if (errno == EINTR) continue;
            die("recv during setup: %s", strerror(errno));
        }
        c->r.len += (size_t)n;
    }
}

static void parse_connack(conn_t *c, const uint8_t *b, uint32_t len) {
    if (len < 2) die("short CONNACK");
    if (b[1] != 0) die("CONNACK refused: 0x%02x", b[1]);
    c->srv_recv_max = 65535;
    if (o_proto == 5 && len > 2) {
        uint32_t plen;
        int vl = dec_varint(b + 2, len - 2, &plen);
        if (vl <= 0) return;
        const uint8_t *p = b + 2 + vl, *end = p + plen;
        while (p < end) {
            uint8_t id = *p++;
            switch (id) {
            case 0x21: c->srv_recv_max = get16(p); p += 2; break;
            case 0x13: case 0x22: p += 2; break;
            case 0x11: case 0x27: p += 4; break;
            case 0x24: case 0x25: case 0x28: case 0x29: case 0x2A: p += 1; break;
            case 0x12: case 0x1F: case 0x1A: case 0x1C: case 0x15: case 0x16:
                p += 2 + get16(p); break;
            case 0x26: p += 2 + get16(p); p += 2 + get16(p); break;
            default: return; /* unknown: stop parsing */
            }
        }
    }
}

static void setup_conn(conn_t *c, const char *cid, uint16_t keepalive) {
    int other = o_nsub_ports && (c->role == R_SUB || c->role == R_RESP);
    c->fd = other ? tcp_connect_to(o_sub_ports[c->idx % o_nsub_ports]) : tcp_connect();
    enc_connect(c, cid, keepalive);
    flush_blocking(c);
    const uint8_t *b; uint32_t len; size_t consumed = 0;
    uint8_t t = read_packet_blocking(c, &b, &len, &consumed);
    if ((t & 0xf0) != 0x20) die("expected CONNACK, got 0x%02x", t);
    parse_connack(c, b, len);
    bconsume(&c->r, consumed);
}

static void setup_subscribe(conn_t *c, const char *filter, int qos) {
    enc_subscribe(c, 1, filter, qos);
    flush_blocking(c);
    const uint8_t *b; uint32_t len; size_t consumed = 0;
    for (;;) {
        uint8_t t = read_packet_blocking(c, &b, &len, &consumed);
        if ((t & 0xf0) == 0x90) {
            uint32_t off = 2;
            if (o_proto == 5) {
                uint32_t pl = 0; int vl = dec_varint(b + 2, len - 2, &pl);
                off += (uint32_t)vl + pl;
            }
            if (off >= len || b[off] >= 0x80) die("SUBSCRIBE %s refused", filter);
            break;
        }
    }
    bconsume(&c->r, consumed);
}

/* ---------------------------------------------------------------- event loop */
typedef struct loop {
    int ep;
    hist_t hist;
    uint64_t now; /* time of the current read batch */
    uint64_t last_recv; /* time of the last delivered message */
    uint64_t delivered;
} loop_t;

static void loop_add(loop_t *L, conn_t *c) {
    set_nonblock(c->fd);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    c->events = EPOLLIN;
    if (epoll_ctl(L->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
}

static void want_out(loop_t *L, conn_t *c, int on) {
    uint32_t ev = EPOLLIN | (on ? EPOLLOUT : 0);
    if (ev == c->events || c->closed) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(L->ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void conn_lost(loop_t *L, conn_t *c, const char *why) {
    if (c->closed) return;
    fprintf(stderr, "loadgen: connection %d/%d lost: %s\n", c->role, c->idx, why);
    atomic_fetch_add(&g_disconnects, 1);
    epoll_ctl(L->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->closed = 1;
}

/* Write what is buffered; returns 1 if everything went out. */
static int flush(loop_t *L, conn_t *c) {
    size_t off = 0;
    while (off < c->w.len) {
        ssize_t n = send(c->fd, c->w.p + off, c->w.len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            bconsume(&c->w, c->w.len);
            conn_lost(L, c, strerror(errno));
            return 0;
        }
        off += (size_t)n;
    }
    bconsume(&c->w, off);
    return c->w.len == 0;
}

static int running(void) { return !atomic_load_explicit(&g_stop, memory_order_relaxed); }

/* ---- publishers */
static uint64_t qos0_floor(void) {
    uint64_t lo = UINT64_MAX;
    for (int i = 0; i < g_nsubs; i++) {
        uint64_t p = atomic_load_explicit(&g_subs[i].progress, memory_order_relaxed);
        if (p < lo) lo = p;
    }
    return lo;
}

static int pub_can_send(conn_t *c, int qos) {
    if (o_messages && c->sent >= o_messages) return 0;
    if (qos) {
        uint32_t win = (uint32_t)o_window;
        if (c->srv_recv_max && c->srv_recv_max < win) win = c->srv_recv_max;
        return c->inflight < win;
    }
    if (o_qos0_window) return c->seq < qos0_floor() + (uint64_t)o_qos0_window;
    return 1;
}

static void pub_fill(loop_t *L, conn_t *c, int qos) {
    if (c->closed) return;
    int budget = 8; /* write rounds before giving the loop back */
    while (budget-- > 0) {
        if (!running()) break;
        uint64_t ts = now_ns();
        if (ts >= g_deadline) { atomic_store(&g_stop, 1); break; }
        while (c->w.len < PUB_BATCH && pub_can_send(c, qos)) {
            uint8_t hdr[HDR_LEN];
            make_hdr(hdr, c->seq, ts, (uint32_t)c->idx);
            uint16_t pid = qos ? alloc_id(c) : 0;
            enc_publish(c, c->topic, c->topic_len, qos, pid, hdr, o_payload);
            c->seq++; c->sent++;
            if (qos) c->inflight++;
        }
        if (c->w.len == 0) break;
        if (!flush(L, c)) break; /* socket full (or lost): wait for EPOLLOUT */
    }
    want_out(L, c, running() && (c->w.len > 0 || pub_can_send(c, qos)));
}

/* ---- packet handling */
static void on_publish(loop_t *L, conn_t *c, uint8_t b0, const uint8_t *b, uint32_t len);

static void handle(loop_t *L, conn_t *c, uint8_t b0, const uint8_t *b, uint32_t len) {
    switch (b0 >> 4) {
    case 3: on_publish(L, c, b0, b, len); break;
    case 4: /* PUBACK */
        if (len >= 2 && release_id(c, get16(b))) {
            c->inflight--; c->acked++;
            if (len >= 3 && b[2] >= 0x80) atomic_fetch_add(&g_errors, 1);
        }
        break;
    case 13: c->waiting = 0; break; /* PINGRESP (idle) */
    case 14: /* DISCONNECT from the server (v5) */
        fprintf(stderr, "loadgen: DISCONNECT from broker, reason 0x%02x\n", len ? b[0] : 0);
        conn_lost(L, c, "DISCONNECT");
        break;
    default: break;
    }
}

static void respond_pump(loop_t *L, conn_t *c);

static void on_publish(loop_t *L, conn_t *c, uint8_t b0, const uint8_t *b, uint32_t len) {
    int qos = (b0 >> 1) & 3;
    uint32_t off = 2 + get16(b);
    const char *topic = (const char *)b + 2;
    int tl = get16(b);
    uint16_t pid = 0;
    if (qos) { pid = get16(b + off); off += 2; }
    if (o_proto == 5) {
        uint32_t pl = 0; int vl = dec_varint(b + off, len - off, &pl);
        off += (uint32_t)vl + pl;
    }
    if (qos == 1) enc_puback(c, pid);
    if (len - off < HDR_LEN) { atomic_fetch_add(&g_errors, 1); return; }
    const uint8_t *h = b + off;
    uint64_t seq, ts; uint32_t pub, magic;
    memcpy(&seq, h, 8); memcpy(&ts, h + 8, 8); memcpy(&pub, h + 16, 4); memcpy(&magic, h + 20, 4);
    if (magic != MAGIC) { atomic_fetch_add(&g_errors, 1); return; }
    L->delivered++;
    L->last_recv = L->now;
    if (c->role == R_SUB) {
        if (pub >= (uint32_t)g_npubs) { atomic_fetch_add(&g_errors, 1); return; }
        c->recv++;
        if (seq < c->next_seq[pub]) c->dup++;
        else {
            c->next_seq[pub] = seq + 1;
            c->uniq[pub]++;
            if (pub == 0) atomic_store_explicit(&c->progress, seq + 1, memory_order_relaxed);
        }
        hadd(&L->hist, L->now > ts ? L->now - ts : 0);
    } else if (c->role == R_RESP) {
        /* req/<i>: queue the answer on resp/<i> with the same payload */
        (void)topic; (void)tl;
        c->recv++;
        uint8_t *p = breserve(&c->pending, 4 + HDR_LEN);
        memcpy(p, &pub, 4); memcpy(p + 4, h, HDR_LEN);
        c->pending.len += 4 + HDR_LEN;
        c->pending_n++;
    } else if (c->role == R_DEV) {
        if (seq + 1 != c->seq) c->dup++;
        else {
            c->recv++;
            c->waiting = 0;
            hadd(&L->hist, L->now > ts ? L->now - ts : 0);
            c->next_at = L->now + (uint64_t)o_think_us * 1000;
        }
    }
}

static void respond_pump(loop_t *L, conn_t *c) {
    uint32_t win = c->srv_recv_max ? c->srv_recv_max : 65535;
    while (c->pending_off < c->pending.len && c->inflight < win) {
        uint8_t *p = c->pending.p + c->pending_off;
        uint32_t dev; memcpy(&dev, p, 4);
        char topic[32];
        int tl = snprintf(topic, sizeof topic, "resp/%u", dev);
        enc_publish(c, topic, tl, 1, alloc_id(c), p + 4, o_payload);
        c->inflight++; c->sent++;
        c->pending_off += 4 + HDR_LEN;
    }
    if (c->pending_off == c->pending.len) { c->pending.len = 0; c->pending_off = 0; }
    (void)L;
}

static void dev_send(loop_t *L, conn_t *c) {
    uint8_t hdr[HDR_LEN];
    make_hdr(hdr, c->seq, now_ns(), (uint32_t)c->idx);
    enc_publish(c, c->topic, c->topic_len, 1, alloc_id(c), hdr, o_payload);
    c->seq++; c->sent++; c->inflight++;
    c->waiting = 1;
    (void)L;
}

static uint8_t g_rtmp[READ_CHUNK];

/* Read everything available and handle complete packets. */
static void on_readable(loop_t *L, conn_t *c, uint8_t *tmp) {
    for (int rounds = 0; rounds < 4 && !c->closed; rounds++) {
        ssize_t n = recv(c->fd, tmp, READ_CHUNK, 0);
        if (n == 0) { conn_lost(L, c, "closed by broker"); return; }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) conn_lost(L, c, strerror(errno));
            return;
        }
        L->now = now_ns();
        if (o_quickack) {
            int one = 1;
            setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
        }
        const uint8_t *p; size_t avail;
        if (c->r.len) {
            memcpy(breserve(&c->r, (size_t)n), tmp, (size_t)n);
            c->r.len += (size_t)n;
            p = c->r.p; avail = c->r.len;
        } else { p = tmp; avail = (size_t)n; }
        size_t off = 0;
        while (avail - off >= 2) {
            uint32_t rem;
            int vl = dec_varint(p + off + 1, avail - off - 1, &rem);
            if (vl < 0) { conn_lost(L, c, "malformed packet"); return; }
            if (vl == 0 || avail - off < 1 + (size_t)vl + rem) break;
            handle(L, c, p[off], p + off + 1 + vl, rem);
            if (c->closed) return;
            off += 1 + (size_t)vl + rem;
        }
        if (c->r.len) bconsume(&c->r, off);
        else if (off < avail) {
            memcpy(breserve(&c->r, avail - off), p + off, avail - off);
            c->r.len = avail - off;
        }
        if ((size_t)n < READ_CHUNK) break;
    }
}

/* ---------------------------------------------------------------- threads: pubs / subs */
typedef struct { loop_t L; int qos; } thr_t;

static void *pub_thread(void *arg) {
    thr_t *T = arg;
    loop_t *L = &T->L;
    struct epoll_event evs[64];
    while (!atomic_load(&g_subs_ready)) usleep(100);
    for (int i = 0; i < g_npubs; i++) pub_fill(L, &g_pubs[i], T->qos);
    for (;;) {
        int n = epoll_wait(L->ep, evs, 64, 1);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(L, c, g_rtmp);
            if (c->closed) continue;
            if (running()) pub_fill(L, c, T->qos);
            else flush(L, c);
        }
        if (!running()) {
            for (int i = 0; i < g_npubs; i++) {
                conn_t *c = &g_pubs[i];
                if (!c->closed) {
                    flush(L, c);
                    want_out(L, c, c->w.len > 0);
                }
            }
        } else if (n == 0 || T->qos == 0) {
            for (int i = 0; i < g_npubs; i++) pub_fill(L, &g_pubs[i], T->qos);
            if (now_ns() >= g_deadline) atomic_store(&g_stop, 1);
        }
        if (!running()) {
            int pending = 0;
            for (int i = 0; i < g_npubs; i++)
                if (!g_pubs[i].closed && (g_pubs[i].w.len || g_pubs[i].inflight)) pending = 1;
            if (!pending) break;
            if (now_ns() > g_deadline + (uint64_t)(o_drain * 1e9)) break;
        }
        if (o_messages) {
            int all = 1;
            for (int i = 0; i < g_npubs; i++) if (g_pubs[i].sent < o_messages) all = 0;
            if (all) atomic_store(&g_stop, 1);
        }
    }
    atomic_store(&g_pub_done, 1);
    return NULL;
}

static uint64_t expected_total(void);
static uint64_t unique_total(void);

static void *sub_thread(void *arg) {
    thr_t *T = arg;
    loop_t *L = &T->L;
    static uint8_t tmp[READ_CHUNK];
    struct epoll_event evs[256];
    uint64_t done_at = 0;
    for (;;) {
        int n = epoll_wait(L->ep, evs, 256, 5);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(L, c, tmp);
            if (!c->closed && c->w.len) want_out(L, c, !flush(L, c));
        }
        if (atomic_load(&g_pub_done)) {
            uint64_t t = now_ns();
            if (!done_at) done_at = t;
            if (unique_total() >= expected_total()) break;
            uint64_t last = L->last_recv > done_at ? L->last_recv : done_at;
            if (t - last > (uint64_t)(o_drain * 1e9)) break;
        }
    }
    for (int i = 0; i < g_nsubs; i++) if (!g_subs[i].closed) flush(L, &g_subs[i]);
    return NULL;
}

static int sub_expects(int sub, int pub) {
    if (!strcmp(o_scenario, "qos1") && g_npubs == g_nsubs) return sub == pub;
    return 1;
}

static uint64_t expected_total(void) {
    uint64_t t = 0;
    for (int s = 0; s < g_nsubs; s++)
        for (int p = 0; p < g_npubs; p++)
            if (sub_expects(s, p)) t += g_pubs[p].sent;
    return t;
}

static uint64_t unique_total(void) {
    uint64_t t = 0;
    for (int s = 0; s < g_nsubs; s++)
        for (int p = 0; p < g_npubs; p++) t += g_subs[s].uniq[p];
    return t;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void disconnect_all(conn_t *cs, int n) {
    for (int i = 0; i < n; i++) {
        conn_t *c = &cs[i];
        if (c->closed) continue;
        int fl = fcntl(c->fd, F_GETFL);
        fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
        c->w.len = 0;
        enc_simple(c, 0xE0);
        send(c->fd, c->w.p, c->w.len, MSG_NOSIGNAL);
        shutdown(c->fd, SHUT_WR);
    }
    for (int i = 0; i < n; i++) if (!cs[i].closed) { close(cs[i].fd); cs[i].closed = 1; }
}

static void print_common(const char *scenario, double wall, double cpu0, const hist_t *h) {
    double gcpu = cpu_seconds() - cpu0;
    printf("\"scenario\":\"%s\",\"protocol\":%d,\"payload\":%d,\"wall_s\":%.3f,"
           "\"gen_cpu_s\":%.3f,\"gen_cpu_pct\":%.1f,\"lat_p50_us\":%.1f,\"lat_p99_us\":%.1f,"
           "\"lat_max_us\":%.1f,\"disconnects\":%lu,\"errors\":%lu",
           scenario, o_proto, o_payload, wall, gcpu, wall > 0 ? 100.0 * gcpu / wall : 0.0,
           h->n ? hpct(h, 0.50) / 1e3 : -1.0, h->n ? hpct(h, 0.99) / 1e3 : -1.0,
           h->n ? (double)h->max / 1e3 : -1.0, (unsigned long)atomic_load(&g_disconnects),
           (unsigned long)atomic_load(&g_errors));
}

static void alloc_pubsub(conn_t *c, int role, int idx) {
    memset(c, 0, sizeof *c);
    c->role = role; c->idx = idx;
    c->ids = calloc(8192, 1);
    c->next_seq = calloc((size_t)g_npubs, sizeof(uint64_t));
    c->uniq = calloc((size_t)g_npubs, sizeof(uint64_t));
}

static int run_pubsub(void) {
    int qos = !strcmp(o_scenario, "qos1") ? 1 : 0;
    int fan = !strcmp(o_scenario, "fanout");
    g_npubs = o_pubs > 0 ? o_pubs : (qos ? 10 : 1);
    g_nsubs = o_subs > 0 ? o_subs : (qos ? 10 : (fan ? 100 : 1));
    if (qos && g_npubs != g_nsubs) die("qos1 needs as many publishers as subscribers");
    g_pubs = calloc((size_t)g_npubs, sizeof(conn_t));
    g_subs = calloc((size_t)g_nsubs, sizeof(conn_t));
    thr_t *TP = calloc(1, sizeof(thr_t)), *TS = calloc(1, sizeof(thr_t));
    TP->L.ep = epoll_create1(EPOLL_CLOEXEC);
    TS->L.ep = epoll_create1(EPOLL_CLOEXEC);
    TP->qos = TS->qos = qos;
    char cid[64];
    pid_t me = getpid();
    for (int i = 0; i < g_nsubs; i++) {
        conn_t *c = &g_subs[i];
        alloc_pubsub(c, R_SUB, i);
        snprintf(cid, sizeof cid, "lg%d-s%d", me, i);
        g_persist_next = o_persistent;
        setup_conn(c, cid, 600);
        g_persist_next = 0;
        char filter[64];
        if (qos) snprintf(filter, sizeof filter, "bench/%s/%d", o_scenario, i);
        else snprintf(filter, sizeof filter, "bench/%s/0", o_scenario);
        setup_subscribe(c, filter, qos);
        loop_add(&TS->L, c);
    }
    for (int i = 0; i < g_npubs; i++) {
        conn_t *c = &g_pubs[i];
        alloc_pubsub(c, R_PUB, i);
        snprintf(cid, sizeof cid, "lg%d-p%d", me, i);
        setup_conn(c, cid, 600);
        c->topic_len = snprintf(c->topic, sizeof c->topic, "bench/%s/%d", o_scenario,
                                qos ? i : 0);
        loop_add(&TP->L, c);
    }
    if (o_settle > 0) usleep((useconds_t)(o_settle * 1e6));
    double cpu0 = cpu_seconds();
    g_t_start = now_ns();
    g_deadline = g_t_start + (uint64_t)(o_duration * 1e9);
    if (o_messages) g_deadline = g_t_start + 3600ull * 1000000000ull;
    pthread_t tp, ts;
    pthread_create(&ts, NULL, sub_thread, TS);
    atomic_store(&g_subs_ready, 1);
    pthread_create(&tp, NULL, pub_thread, TP);
    pthread_join(tp, NULL);
    pthread_join(ts, NULL);
    uint64_t end = TS->L.last_recv ? TS->L.last_recv : now_ns();
    double wall = (double)(end - g_t_start) / 1e9;
    uint64_t sent = 0, acked = 0, recv = 0, dup = 0, uniq = unique_total();
    uint64_t expected = expected_total();
    for (int i = 0; i < g_npubs; i++) { sent += g_pubs[i].sent; acked += g_pubs[i].acked; }
    for (int i = 0; i < g_nsubs; i++) { recv += g_subs[i].recv; dup += g_subs[i].dup; }
    disconnect_all(g_pubs, g_npubs);
    disconnect_all(g_subs, g_nsubs);
    printf("{");
    print_common(o_scenario, wall, cpu0, &TS->L.hist);
    printf(",\"publishers\":%d,\"subscribers\":%d,\"qos\":%d,\"sent\":%lu,\"acked\":%lu,"
           "\"expected\":%lu,\"delivered\":%lu,\"unique\":%lu,\"lost\":%lu,\"dup\":%lu,"
           "\"msgs_per_s\":%.1f}\n",
           g_npubs, g_nsubs, qos, (unsigned long)sent, (unsigned long)acked,
           (unsigned long)expected, (unsigned long)recv, (unsigned long)uniq,
           (unsigned long)(expected > uniq ? expected - uniq : 0), (unsigned long)dup,
           wall > 0 ? (double)recv / wall : 0.0);
    return 0;
}

/* ---------------------------------------------------------------- reqresp */
static int run_reqresp(int pairs) {
    int nd = o_devices;
    int nr = pairs ? nd : 1; /* responders: one per device, or one for all */
    conn_t *devs = calloc((size_t)nd, sizeof(conn_t));
    conn_t *resps = calloc((size_t)nr, sizeof(conn_t));
    loop_t *L = calloc(1, sizeof(loop_t));
    L->ep = epoll_create1(EPOLL_CLOEXEC);
    g_npubs = nd;
    char cid[64], filter[64];
    pid_t me = getpid();
    for (int i = 0; i < nr; i++) {
        conn_t *resp = &resps[i];
        alloc_pubsub(resp, R_RESP, i);
        snprintf(cid, sizeof cid, "lg%d-responder%d", me, i);
        setup_conn(resp, cid, 600);
        if (pairs) snprintf(filter, sizeof filter, "req/%d", i);
        else snprintf(filter, sizeof filter, "req/+");
        setup_subscribe(resp, filter, 1);
        loop_add(L, resp);
    }
    for (int i = 0; i < nd; i++) {
        conn_t *c = &devs[i];
        alloc_pubsub(c, R_DEV, i);
        snprintf(cid, sizeof cid, "lg%d-d%d", me, i);
        setup_conn(c, cid, 600);
        snprintf(filter, sizeof filter, "resp/%d", i);
        setup_subscribe(c, filter, 1);
        c->topic_len = snprintf(c->topic, sizeof c->topic, "req/%d", i);
        loop_add(L, c);
    }
    double cpu0 = cpu_seconds();
    g_t_start = now_ns();
    g_deadline = g_t_start + (uint64_t)(o_duration * 1e9);
    for (int i = 0; i < nd; i++) { dev_send(L, &devs[i]); flush(L, &devs[i]); }
    struct epoll_event evs[128];
    uint64_t stop_at = 0;
    for (;;) {
        int n = epoll_wait(L->ep, evs, 128, o_think_us ? 1 : 5);
        uint64_t t = now_ns();
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(L, c, g_rtmp);
        }
        int running_now = t < g_deadline;
        if (!running_now && !stop_at) stop_at = t;
        for (int i = 0; i < nr; i++)
            if (!resps[i].closed) respond_pump(L, &resps[i]);
        int outstanding = 0;
        for (int i = 0; i < nd; i++) {
            conn_t *c = &devs[i];
            if (c->closed) continue;
            if (!c->waiting && running_now && t >= c->next_at) dev_send(L, c);
            if (c->waiting) outstanding++;
            if (c->w.len) want_out(L, c, !flush(L, c));
        }
        for (int i = 0; i < nr; i++) {
            conn_t *resp = &resps[i];
            if (resp->w.len && !resp->closed) want_out(L, resp, !flush(L, resp));
        }
        if (stop_at && (!outstanding || t - stop_at > (uint64_t)(o_drain * 1e9))) break;
    }
    uint64_t end = L->last_recv ? L->last_recv : now_ns();
    double wall = (double)(end - g_t_start) / 1e9;
    uint64_t sent = 0, got = 0, dup = 0, answered = 0;
    for (int i = 0; i < nd; i++) { sent += devs[i].sent; got += devs[i].recv; dup += devs[i].dup; }
    for (int i = 0; i < nr; i++) answered += resps[i].recv;
    disconnect_all(devs, nd);
    disconnect_all(resps, nr);
    printf("{");
    print_common(pairs ? "reqresp-pairs" : "reqresp", wall, cpu0, &L->hist);
    printf(",\"devices\":%d,\"responders\":%d,\"think_us\":%d,\"requests\":%lu,\"responses\":%lu,"
           "\"responder_received\":%lu,\"delivered\":%lu,\"expected\":%lu,\"lost\":%lu,"
           "\"dup\":%lu,\"quickack\":%d,\"round_trips_per_s\":%.1f,\"msgs_per_s\":%.1f}\n",
           nd, nr, o_think_us, (unsigned long)sent, (unsigned long)got, (unsigned long)answered,
           (unsigned long)L->delivered, (unsigned long)(2 * sent),
           (unsigned long)(sent > got ? sent - got : 0), (unsigned long)dup, o_quickack,
           wall > 0 ? (double)got / wall : 0.0, wall > 0 ? (double)L->delivered / wall : 0.0);
    return 0;
}

/* ---------------------------------------------------------------- idle */
static long proc_status_kb(int pid, const char *key) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    size_t kl = strlen(key);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, kl) && line[kl] == ':') { v = atol(line + kl + 1); break; }
    fclose(f);
    return v;
}

static int run_idle(void) {
    int n = o_conns;
    conn_t *cs = calloc((size_t)n, sizeof(conn_t));
    loop_t *L = calloc(1, sizeof(loop_t));
    L->ep = epoll_create1(EPOLL_CLOEXEC);
    long rss0 = o_broker_pid ? proc_status_kb(o_broker_pid, "VmRSS") : -1;
    double cpu0 = cpu_seconds();
    uint64_t t0 = now_ns();
    char cid[64];
    pid_t me = getpid();
    int opened = 0, acked = 0, window = 64;
    struct epoll_event evs[256];
    /* state in c->waiting: 1 = CONNECT sent, 2 = CONNACK received + PINGREQ sent, 0 = done */
    while (acked < n) {
        while (opened < n && opened - acked < window) {
            conn_t *c = &cs[opened];
            c->role = R_IDLE; c->idx = opened;
            c->fd = tcp_connect();
            snprintf(cid, sizeof cid, "lg%d-i%d", me, opened);
            enc_connect(c, cid, (uint16_t)o_keepalive);
            flush_blocking(c);
            c->waiting = 1;
            loop_add(L, c);
            opened++;
        }
        int k = epoll_wait(L->ep, evs, 256, 1000);
        for (int i = 0; i < k; i++) {
            conn_t *c = evs[i].data.ptr;
            /* decode CONNACK / PINGRESP by hand */
            uint8_t tmp[64];
            ssize_t r = recv(c->fd, tmp, sizeof tmp, 0);
            if (r <= 0) { if (r == 0 || errno != EAGAIN) conn_lost(L, c, "closed"); continue; }
            memcpy(breserve(&c->r, (size_t)r), tmp, (size_t)r);
            c->r.len += (size_t)r;
            while (c->r.len >= 2) {
                uint32_t rem;
                int vl = dec_varint(c->r.p + 1, c->r.len - 1, &rem);
                if (vl <= 0 || c->r.len < 1 + (size_t)vl + rem) break;
                uint8_t t = c->r.p[0] >> 4;
                if (t == 2) {
                    if (rem < 2 || c->r.p[1 + vl + 1] != 0) die("idle: CONNACK refused");
                    enc_simple(c, 0xC0);
                    flush(L, c);
                    c->waiting = 2;
                } else if (t == 13 && c->waiting == 2) {
                    c->waiting = 0;
                    acked++;
                }
                bconsume(&c->r, 1 + (size_t)vl + rem);
            }
            if (c->waiting == 0) { free(c->r.p); c->r.p = NULL; c->r.cap = 0; }
        }
        if (atomic_load(&g_disconnects) > 0) die("idle: connections were closed by the broker");
        if (now_ns() - t0 > 300ull * 1000000000ull) die("idle: timed out with %d/%d", acked, n);
    }
    double connect_s = (double)(now_ns() - t0) / 1e9;
    fprintf(stderr, "connected %d in %.3f s\n", n, connect_s);
    fflush(stderr);
    usleep((useconds_t)(o_hold * 1e6));
    long rss1 = o_broker_pid ? proc_status_kb(o_broker_pid, "VmRSS") : -1;
    double wall = (double)(now_ns() - t0) / 1e9;
    hist_t h = {0};
    printf("{");
    print_common("idle", wall, cpu0, &h);
    printf(",\"connections\":%d,\"connect_s\":%.3f,\"conns_per_s\":%.1f,\"rss_before_kb\":%ld,"
           "\"rss_after_kb\":%ld,\"kb_per_conn\":%.3f,\"delivered\":0,\"lost\":0}\n",
           n, connect_s, n / connect_s, rss0, rss1,
           (rss0 >= 0 && rss1 >= 0) ? (double)(rss1 - rss0) / n : -1.0);
    fflush(stdout);
    disconnect_all(cs, n);
    return 0;
}

/* ---------------------------------------------------------------- main */
static void usage(void) {
    fprintf(stderr,
            "usage: loadgen --port P [--host H] --scenario stream|qos1|fanout|reqresp|\n"
            "  reqresp-pairs|idle\n"
            "  [--protocol 4|5] [--duration S] [--messages M] [--payload BYTES]\n"
            "  [--window N (qos1)] [--qos0-window N] [--pubs N] [--subs N] [--devices N]\n"
            "  [--think-us US] [--conns N] [--keepalive S] [--broker-pid PID] [--hold S]\n"
            "  [--drain S] [--quickack] [--persistent] [--sub-port P[,P...]] [--sources N]\n"
            "  [--settle S]\n");
    exit(2);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'h'}, {"port", 1, 0, 'p'}, {"scenario", 1, 0, 's'},
        {"protocol", 1, 0, 'P'}, {"duration", 1, 0, 'd'}, {"messages", 1, 0, 'm'},
        {"payload", 1, 0, 'l'}, {"window", 1, 0, 'w'}, {"qos0-window", 1, 0, 'W'},
        {"pubs", 1, 0, 'a'}, {"subs", 1, 0, 'b'}, {"devices", 1, 0, 'D'},
        {"think-us", 1, 0, 't'}, {"conns", 1, 0, 'c'}, {"keepalive", 1, 0, 'k'},
        {"broker-pid", 1, 0, 'B'}, {"hold", 1, 0, 'H'}, {"drain", 1, 0, 'r'},
        {"quickack", 0, 0, 'q'}, {"persistent", 0, 0, 'S'}, {"sub-port", 1, 0, 'O'},
        {"sources", 1, 0, 'A'}, {"settle", 1, 0, 'e'}, {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': o_host = optarg; break;
        case 'p': o_port = atoi(optarg); break;
        case 's': o_scenario = optarg; break;
        case 'P': o_proto = atoi(optarg); break;
        case 'd': o_duration = atof(optarg); break;
        case 'm': o_messages = strtoull(optarg, NULL, 10); break;
        case 'l': o_payload = atoi(optarg); break;
        case 'w': o_window = atoi(optarg); break;
        case 'W': o_qos0_window = atoi(optarg); break;
        case 'a': o_pubs = atoi(optarg); break;
        case 'b': o_subs = atoi(optarg); break;
        case 'D': o_devices = atoi(optarg); break;
        case 't': o_think_us = atoi(optarg); break;
        case 'c': o_conns = atoi(optarg); break;
        case 'k': o_keepalive = atoi(optarg); break;
        case 'B': o_broker_pid = atoi(optarg); break;
        case 'H': o_hold = atof(optarg); break;
        case 'r': o_drain = atof(optarg); break;
        case 'q': o_quickack = 1; break;
        case 'S': o_persistent = 1; break;
        case 'O':
            for (char *p = optarg; *p && o_nsub_ports < 16; p = strchr(p, ',') ? strchr(p, ',') + 1 : "")
                o_sub_ports[o_nsub_ports++] = atoi(p);
            break;
        case 'A': o_sources = atoi(optarg); break;
        case 'e': o_settle = atof(optarg); break;
        default: usage();
        }
    }
    if (o_proto != 4 && o_proto != 5) die("--protocol must be 4 or 5");
    if (o_payload < HDR_LEN || o_payload > 65000) die("--payload must be %d..65000", HDR_LEN);
    if (o_window < 1 || o_window > 65000) die("--window must be 1..65000");
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < (int)sizeof g_pad; i++) g_pad[i] = (uint8_t)('a' + i % 26);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (!strcmp(o_scenario, "stream") || !strcmp(o_scenario, "qos1") ||
        !strcmp(o_scenario, "fanout"))
        return run_pubsub();
    if (!strcmp(o_scenario, "reqresp")) return run_reqresp(0);
    if (!strcmp(o_scenario, "reqresp-pairs")) return run_reqresp(1);
    if (!strcmp(o_scenario, "idle")) return run_idle();
    usage();
    return 2;
}
