/*
 * nbd: a client of a Network Block Device server, over libnbd.
 *
 * Options as QEMU 7.2: server (unix or inet), export, reconnect-delay,
 * open-timeout, x-dirty-bitmap (a meta context read in place of
 * base:allocation), tls-creds (refused: there is no TLS yet), and the
 * legacy host/port/path; filenames as in nbd-uri.c.
 *
 * A connection that dies (the server went away, or reset it) is not fatal:
 * the node goes to "waiting" for reconnect-delay seconds, during which
 * requests (those that failed with the connection and new ones) wait for a
 * new connection and are then sent again; after that, or at once without
 * reconnect-delay, they fail with EIO.  Either way a reconnection coroutine
 * keeps trying in the background (1, 2, 4 .. 16 s apart, as QEMU) until it
 * succeeds or the node is closed.  Nothing polls: every wait is on the
 * socket, a timer or a queue.
 *
 * x-strata-multi-conn=N (strata's own; QEMU 7.2 has one connection): where
 * the server offers multi-conn, N connections, each with the life above;
 * requests go to the connected one with the fewest in flight, and wait
 * only while none is connected and one is within its reconnect-delay.
 */
#include <errno.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/nbd-client.h"
#include "strata/secret.h"
#include "nbd-int.h"

#define NBD_MAX_TRANSFER (32 * MiB)      /* QEMU's NBD_MAX_BUFFER_SIZE */
#define RECONNECT_BACKOFF_MAX_NS (16 * 1000000000LL)
/* x-strata-multi-conn: the most connections a node may have. */
#define NBD_MAX_CONNS 16
/* ... and how many it has if not told (docs/performance.md, "NBD client"). */
#define NBD_DEFAULT_CONNS 1

typedef enum {
    LINK_CONNECTED,
    LINK_CONNECTING,    /* an extra connection's first handshake */
    LINK_WAIT,          /* lost; requests wait for the reconnection */
    LINK_NOWAIT,        /* lost; requests fail at once */
    LINK_QUIT,          /* lost for good (the export changed) */
} LinkState;

typedef struct NbdState NbdState;

/*
 * One connection of a node.  With multi-conn there are several, each with
 * its own reconnection; the node's requests go to the connected one with
 * the fewest commands in flight.
 */
typedef struct {
    NbdState *s;
    NbdConn conn;
    LinkState state;
    unsigned generation;      /* bumped each time the connection is lost */
    GSource *delay_timer;     /* ends LINK_WAIT */
    bool reconnecting;        /* its (re)connection coroutine runs */
    NbdWait *reconnect_sleep;
    unsigned in_flight;
} NbdLink;

struct NbdState {
    BlockNode *bs;
    NbdAddress addr;
    char *export;
    char *bitmap;             /* x-dirty-bitmap */
    uint32_t reconnect_delay;
    uint32_t open_timeout;
    uint32_t want_conns;      /* x-strata-multi-conn */

    NbdLink links[NBD_MAX_CONNS];
    int nlinks;               /* links in use: 1, or more with multi-conn */
    CoQueue waiters;          /* requests waiting for a link */
    bool closing;

    /* What the server said at the first connection. */
    int64_t size;
    uint32_t min_block, opt_block, max_block;
    bool read_only, can_flush, can_fua, can_trim, can_zero, can_fast_zero;
    bool can_multi_conn;
    bool has_status;          /* the meta context was negotiated */
};

/* ---- Options ---- */

static bool take_server(NbdState *s, json_t *options, GError **errp)
{
    json_t *srv = opts_take_subtree(options, "server");
    char *type = NULL;
    bool ok = false;

    if (!srv || !json_object_size(srv)) {
        error_setg(errp, "NBD server address missing");
        goto out;
    }
    if (!opts_take_str(srv, "type", &type, errp)) {
        goto out;
    }
    if (!type) {
        error_setg(errp, "Parameter 'type' is missing");
        goto out;
    }
    if (!strcmp(type, "unix")) {
        s->addr.is_unix = true;
        if (!opts_take_str(srv, "path", &s->addr.path, errp)) {
            goto out;
        }
        if (!s->addr.path) {
            error_setg(errp, "Parameter 'path' is missing");
            goto out;
        }
    } else if (!strcmp(type, "inet")) {
        if (!opts_take_str(srv, "host", &s->addr.host, errp) ||
            !opts_take_str(srv, "port", &s->addr.port, errp)) {
            goto out;
        }
        if (!s->addr.host) {
            error_setg(errp, "Parameter 'host' is missing");
            goto out;
        }
        if (!s->addr.port) {
            error_setg(errp, "Parameter 'port' is missing");
            goto out;
        }
    } else if (!strcmp(type, "fd") || !strcmp(type, "vsock")) {
        error_setg(errp, "NBD server addresses of type '%s' are not "
                   "supported", type);
        goto out;
    } else {
        error_setg(errp, "Parameter 'type' does not accept value '%s'", type);
        goto out;
    }
    char *left = opts_first_key(srv);
    if (left) {
        error_setg(errp, "Parameter '%s' is unexpected", left);
        g_free(left);
        goto out;
    }
    ok = true;
out:
    g_free(type);
    json_decref(srv);
    return ok;
}

/* driver=nbd,host=H,port=P / path=S: QEMU's older spelling of server. */
static bool take_legacy_address(json_t *options, GError **errp)
{
    char *path = NULL, *host = NULL, *port = NULL;
    bool ok = false;

    if (!opts_take_str(options, "path", &path, errp) ||
        !opts_take_str(options, "host", &host, errp) ||
        !opts_take_str(options, "port", &port, errp)) {
        goto out;
    }
    if (!path && !host && !port) {
        ok = true;
        goto out;
    }
    json_t *flat = opts_flatten(options);
    const char *key;
    json_t *v;
    json_object_foreach(flat, key, v) {
        if (g_str_has_prefix(key, "server.")) {
            error_setg(errp, "Cannot use 'server' and path/host/port at the "
                       "same time");
            json_decref(flat);
            goto out;
        }
    }
    json_decref(flat);
    if (path && host) {
        error_setg(errp, "path and host may not be used at the same time");
        goto out;
    }
    if (path) {
        if (port) {
            error_setg(errp, "port may not be used without host");
            goto out;
        }
        opts_set_dotted(options, "server.type", json_string("unix"), NULL);
        opts_set_dotted(options, "server.path", json_string_nocheck(path), NULL);
    } else if (host) {
        opts_set_dotted(options, "server.type", json_string("inet"), NULL);
        opts_set_dotted(options, "server.host", json_string_nocheck(host), NULL);
        opts_set_dotted(options, "server.port",
                        json_string_nocheck(port ? port : "10809"), NULL);
    }
    ok = true;
out:
    g_free(path);
    g_free(host);
    g_free(port);
    return ok;
}

/* The program's objects beyond secrets (nbd-client.h); set at start-up. */
static NbdObjectExists *object_exists;

void nbd_client_set_object_exists(NbdObjectExists *fn)
{
    object_exists = fn;
}

static bool take_options(NbdState *s, json_t *options, GError **errp)
{
    char *tls = NULL, *tls_host = NULL;
    uint64_t delay = 0, timeout = 0, conns = NBD_DEFAULT_CONNS;
    bool ok = false;

    /*
     * A "filename" option is not parsed (as in QEMU, only a filename given
     * as such is): it is left over, and refused, after the address.
     */
    if (!opts_take_str(options, "export", &s->export, errp) ||
        !opts_take_str(options, "x-dirty-bitmap", &s->bitmap, errp) ||
        !opts_take_str(options, "tls-creds", &tls, errp) ||
        !opts_take_str(options, "tls-hostname", &tls_host, errp) ||
        !opts_take_number(options, "reconnect-delay", &delay, errp) ||
        !opts_take_number(options, "open-timeout", &timeout, errp) ||
        !opts_take_number(options, "x-strata-multi-conn", &conns, errp) ||
        !take_legacy_address(options, errp) ||
        !take_server(s, options, errp)) {
        goto out;
    }
    /* QEMU stores both in 32 bits. */
    s->reconnect_delay = (uint32_t)delay;
    s->open_timeout = (uint32_t)timeout;
    if (conns < 1 || conns > NBD_MAX_CONNS) {
        error_setg(errp, "x-strata-multi-conn must be between 1 and %d",
                   NBD_MAX_CONNS);
        goto out;
    }
    s->want_conns = (uint32_t)conns;
    if (tls) {
        /*
         * strata has no TLS credentials objects, so no id names one:
         * QEMU's message for an object of another type, or for none,
         * then why and what to do (TLS itself is not built yet).
         */
        if (secret_object_exists(tls) || (object_exists && object_exists(tls))) {
            error_setg(errp, "Object with id '%s' is not TLS credentials",
                       tls);
        } else {
            error_setg(errp, "No TLS credentials with id '%s' (strata has "
                       "no TLS yet, so no such object can exist: connect "
                       "without tls-creds, over a unix socket or an "
                       "encrypted tunnel such as ssh -L or stunnel)", tls);
        }
        goto out;
    }
    if (tls_host) {
        error_setg(errp, "tls-hostname is provided but TLS is not enabled");
        goto out;
    }
    ok = true;
out:
    g_free(tls);
    g_free(tls_host);
    return ok;
}

/* ---- Connecting ---- */

static void nbd_link_lost(NbdLink *l, unsigned generation);

static void conn_dead_cb(void *opaque)
{
    NbdLink *l = opaque;
    nbd_link_lost(l, l->generation);
}

/*
 * Read what the server offers; on a later connection (a reconnection or
 * another connection of multi-conn), check nothing changed.
 */
static bool take_server_info(NbdLink *l, bool first, GError **errp)
{
    NbdState *s = l->s;
    struct nbd_handle *h = l->conn.h;
    int64_t size = nbd_lib.get_size(h);
    bool ro = nbd_lib.is_read_only(h) == 1;

    if (size < 0) {
        error_setg(errp, "%s", nbd_lib.get_error());
        return false;
    }
    if (!first) {
        if (size != s->size || (ro && !s->read_only)) {
            error_setg(errp, "The NBD export changed while reconnecting");
            return false;
        }
        return true;
    }
    s->size = size;
    s->read_only = ro;
    s->can_flush = nbd_lib.can_flush(h) == 1;
    s->can_fua = nbd_lib.can_fua(h) == 1;
    s->can_trim = nbd_lib.can_trim(h) == 1;
    s->can_zero = nbd_lib.can_zero(h) == 1;
    s->can_fast_zero = nbd_lib.can_fast_zero(h) == 1;
    s->can_multi_conn = nbd_lib.can_multi_conn(h) == 1;
    s->has_status = nbd_lib.can_meta_context(
        h, s->bitmap ? s->bitmap : LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
    int64_t v = nbd_lib.get_block_size(h, LIBNBD_SIZE_MINIMUM);
    s->min_block = v > 0 ? (uint32_t)v : 0;
    v = nbd_lib.get_block_size(h, LIBNBD_SIZE_PREFERRED);
    s->opt_block = v > 0 ? (uint32_t)v : 0;
    v = nbd_lib.get_block_size(h, LIBNBD_SIZE_MAXIMUM);
    s->max_block = v > 0 ? (uint32_t)v : 0;
    return true;
}

static int coroutine_fn connect_once(NbdLink *l, int64_t deadline,
                                     GError **errp)
{
    NbdState *s = l->s;
    NbdConnectParams p = {
        .addr = &s->addr,
        .export = s->export,
        .meta_context = s->bitmap ? s->bitmap : LIBNBD_CONTEXT_BASE_ALLOCATION,
        .cancel = &s->closing,
    };
    int ret = nbd_conn_connect(&l->conn, &p, deadline, errp);
    if (ret < 0) {
        return ret;
    }
    l->conn.on_dead = conn_dead_cb;
    l->conn.opaque = l;
    return 0;
}

/* Sleep up to ns, or until the node is closed. */
static void coroutine_fn reconnect_sleep(NbdLink *l, int64_t ns)
{
    NbdWait w;
    l->reconnect_sleep = &w;
    nbd_wait(&w, ns);
    l->reconnect_sleep = NULL;
}

static void drop_delay_timer(NbdLink *l)
{
    if (l->delay_timer) {
        g_source_destroy(l->delay_timer);
        g_source_unref(l->delay_timer);
        l->delay_timer = NULL;
    }
}

static void end_wait(NbdLink *l)
{
    drop_delay_timer(l);
    if (l->state == LINK_WAIT) {
        l->state = LINK_NOWAIT;
    }
    co_queue_restart_all(&l->s->waiters);
}

static gboolean delay_timer_cb(gpointer opaque)
{
    NbdLink *l = opaque;
    g_source_unref(l->delay_timer);
    l->delay_timer = NULL;
    end_wait(l);
    return G_SOURCE_REMOVE;
}

static void reconnect_co(void *opaque)
{
    NbdLink *l = opaque;
    NbdState *s = l->s;
    int64_t backoff = 1000000000LL;

    while (!s->closing && l->state != LINK_CONNECTED &&
           l->state != LINK_QUIT) {
        GError *err = NULL;
        nbd_conn_close(&l->conn, false);
        /* An attempt never outlasts the longest pause between attempts. */
        if (connect_once(l, clock_ns() + RECONNECT_BACKOFF_MAX_NS, &err) == 0) {
            if (take_server_info(l, false, &err)) {
                l->state = LINK_CONNECTED;
            } else {
                nbd_conn_close(&l->conn, true);
                l->state = LINK_QUIT;
            }
            g_clear_error(&err);
            break;
        }
        g_clear_error(&err);
        if (s->closing) {
            break;
        }
        reconnect_sleep(l, backoff);
        backoff = MIN(backoff * 2, RECONNECT_BACKOFF_MAX_NS);
    }
    drop_delay_timer(l);
    l->reconnecting = false;
    co_queue_restart_all(&s->waiters);
}

/*
 * The connection of `generation` failed (noticed by the loop or by a
 * request).  Only the first to notice acts.
 */
static void nbd_link_lost(NbdLink *l, unsigned generation)
{
    NbdState *s = l->s;
    if (generation != l->generation || l->state != LINK_CONNECTED) {
        return;
    }
    l->generation++;
    if (s->closing) {
        l->state = LINK_QUIT;
        return;
    }
    l->state = s->reconnect_delay ? LINK_WAIT : LINK_NOWAIT;
    if (s->reconnect_delay) {
        l->delay_timer = g_timeout_source_new(
            (guint)MIN((uint64_t)s->reconnect_delay * 1000, G_MAXUINT));
        g_source_set_callback(l->delay_timer, delay_timer_cb, l, NULL);
        g_source_attach(l->delay_timer, loop_context(loop_get()));
    }
    if (!l->reconnecting) {
        l->reconnecting = true;
        co_wake(co_create(reconnect_co, l));
    }
}

/*
 * The first handshake of a connection beyond the first (multi-conn), in
 * the background so that opening waits for one only.  One that does not
 * come up (a server limiting its clients may leave it unanswered in its
 * backlog) is given up for good: the node works with those it has.
 */
static void extra_connect_co(void *opaque)
{
    NbdLink *l = opaque;
    NbdState *s = l->s;
    GError *err = NULL;

    if (connect_once(l, clock_ns() + RECONNECT_BACKOFF_MAX_NS, &err) == 0 &&
        take_server_info(l, false, &err) &&
        nbd_lib.can_multi_conn(l->conn.h) == 1) {
        l->state = s->closing ? LINK_QUIT : LINK_CONNECTED;
    } else {
        nbd_conn_close(&l->conn, !err);
        l->state = LINK_QUIT;
    }
    g_clear_error(&err);
    l->reconnecting = false;
    co_queue_restart_all(&s->waiters);
}

/* ---- Requests ---- */

typedef enum { CMD_READ, CMD_WRITE, CMD_ZERO, CMD_TRIM, CMD_FLUSH,
               CMD_STATUS } CmdType;

typedef struct {
    CmdType type;
    uint64_t offset, bytes;
    void *buf;
    uint32_t flags;
    /* Completion. */
    Coroutine *co;
    bool done, waiting;
    int ret;
    /* Block status: the first extent for our context. */
    bool got_extent;
    uint32_t ext_len, ext_flags;
    const char *context;
} NbdCmd;

static int cmd_complete_cb(void *opaque, int *error)
{
    NbdCmd *c = opaque;
    c->ret = *error ? -*error : 0;
    c->done = true;
    if (c->waiting) {
        co_wake(c->co);
    }
    return 1;   /* retire the command */
}

static int cmd_extent_cb(void *opaque, const char *metacontext,
                         uint64_t offset, uint32_t *entries,
                         size_t nr_entries, int *error)
{
    NbdCmd *c = opaque;
    if (strcmp(metacontext, c->context) || c->got_extent || nr_entries < 2) {
        return 0;
    }
    c->got_extent = true;
    c->ext_len = entries[0];
    c->ext_flags = entries[1];
    return 0;
}

static int64_t cmd_submit(struct nbd_handle *h, NbdCmd *c)
{
    nbd_completion_callback cb = { .callback = cmd_complete_cb,
                                   .user_data = c };
    switch (c->type) {
    case CMD_READ:
        return nbd_lib.aio_pread(h, c->buf, c->bytes, c->offset, cb, 0);
    case CMD_WRITE:
        return nbd_lib.aio_pwrite(h, c->buf, c->bytes, c->offset, cb, c->flags);
    case CMD_ZERO:
        return nbd_lib.aio_zero(h, c->bytes, c->offset, cb, c->flags);
    case CMD_TRIM:
        return nbd_lib.aio_trim(h, c->bytes, c->offset, cb, c->flags);
    case CMD_FLUSH:
        return nbd_lib.aio_flush(h, cb, 0);
    case CMD_STATUS: {
        nbd_extent_callback ecb = { .callback = cmd_extent_cb,
                                    .user_data = c };
        return nbd_lib.aio_block_status(h, c->bytes, c->offset, ecb, cb,
                                        LIBNBD_CMD_FLAG_REQ_ONE);
    }
    }
    return -1;
}

/*
 * The connected link with the fewest commands in flight (the first among
 * equals, so that a node with one connection uses it alone), or NULL.
 */
static NbdLink *pick_link(NbdState *s)
{
    NbdLink *best = NULL;
    for (int i = 0; i < s->nlinks; i++) {
        NbdLink *l = &s->links[i];
        if (l->state == LINK_CONNECTED &&
            (!best || l->in_flight < best->in_flight)) {
            best = l;
        }
    }
    return best;
}

/* Is any link lost but within its reconnect-delay? */
static bool any_link_waiting(NbdState *s)
{
    for (int i = 0; i < s->nlinks; i++) {
        if (s->links[i].state == LINK_WAIT) {
            return true;
        }
    }
    return false;
}

/*
 * Send one command and wait for its reply; a command whose connection
 * dies is sent again, on another connection or the next one, while
 * reconnect-delay lasts.
 *
 * Any connection will do for any command: the server promised multi-conn
 * consistency before a node has more than one, so a flush on one covers
 * the writes completed on all of them (the NBD protocol, "Multiple
 * connections"), which are all the writes a flush must cover.
 */
static int coroutine_fn nbd_co_cmd(NbdState *s, NbdCmd *c)
{
    for (;;) {
        NbdLink *l;
        while (!(l = pick_link(s)) && any_link_waiting(s)) {
            co_queue_wait(&s->waiters);
        }
        if (!l) {
            return -EIO;
        }
        unsigned gen = l->generation;
        c->co = co_self();
        c->done = c->waiting = c->got_extent = false;
        c->ret = 0;
        int64_t cookie = cmd_submit(l->conn.h, c);
        if (cookie < 0 && !c->done) {
            c->ret = -(nbd_lib.get_errno() ? nbd_lib.get_errno() : EIO);
            c->done = true;
        }
        nbd_conn_kick(&l->conn);
        if (!c->done) {
            c->waiting = true;
            l->in_flight++;
            /*
             * libnbd's completion callback holds c until it sets done: a
             * stray entry must not return an unread buffer as read (QEMU
             * asserts its reply's wake-up was its own).
             */
            while (!c->done) {
                co_yield();
            }
            l->in_flight--;
        }
        if (c->ret == 0) {
            return 0;
        }
        if (gen == l->generation && nbd_conn_alive(&l->conn)) {
            return c->ret;      /* the server's answer */
        }
        nbd_link_lost(l, gen);
        /* Without reconnect-delay, QEMU fails what was lost in flight. */
        if (!s->reconnect_delay || l->state == LINK_NOWAIT ||
            l->state == LINK_QUIT) {
            return -EIO;
        }
    }
}

/* Point at the request's data, or at a bounce buffer if it is scattered. */
static void *cmd_buffer(IOVec *qiov, size_t qoff, int64_t bytes, bool *bounce)
{
    size_t off = qoff;
    for (int i = 0; i < qiov->niov; i++) {
        if (off < qiov->iov[i].iov_len) {
            if (qiov->iov[i].iov_len - off >= (size_t)bytes) {
                *bounce = false;
                return (char *)qiov->iov[i].iov_base + off;
            }
            break;
        }
        off -= qiov->iov[i].iov_len;
    }
    *bounce = true;
    return g_malloc((size_t)bytes);
}

static int coroutine_fn nbd_co_preadv(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov, size_t qoff,
                                      int flags)
{
    NbdState *s = bs->opaque;
    bool bounce;
    if (!bytes) {
        return 0;
    }
    NbdCmd c = { .type = CMD_READ, .offset = offset, .bytes = bytes };
    c.buf = cmd_buffer(qiov, qoff, bytes, &bounce);
    int ret = nbd_co_cmd(s, &c);
    if (bounce) {
        if (ret == 0) {
            iov_from_buf(qiov->iov, qiov->niov, qoff, c.buf, bytes);
        }
        g_free(c.buf);
    }
    return ret;
}

static int coroutine_fn nbd_co_pwritev(BlockNode *bs, int64_t offset,
                                       int64_t bytes, IOVec *qiov, size_t qoff,
                                       int flags)
{
    NbdState *s = bs->opaque;
    bool bounce;
    if (!bytes) {
        return 0;
    }
    NbdCmd c = { .type = CMD_WRITE, .offset = offset, .bytes = bytes,
                 .flags = (flags & REQ_FUA) ? LIBNBD_CMD_FLAG_FUA : 0 };
    c.buf = cmd_buffer(qiov, qoff, bytes, &bounce);
    if (bounce) {
        iov_to_buf(qiov->iov, qiov->niov, qoff, c.buf, bytes);
    }
    int ret = nbd_co_cmd(s, &c);
    if (bounce) {
        g_free(c.buf);
    }
    return ret;
}

static int coroutine_fn nbd_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                             int64_t bytes, int flags)
{
    NbdState *s = bs->opaque;
    if (!s->can_zero) {
        return -ENOTSUP;
    }
    if ((flags & REQ_NO_FALLBACK) && !s->can_fast_zero) {
        return -ENOTSUP;
    }
    NbdCmd c = { .type = CMD_ZERO, .offset = offset, .bytes = bytes };
    if (flags & REQ_FUA) {
        c.flags |= LIBNBD_CMD_FLAG_FUA;
    }
    if (!(flags & REQ_MAY_UNMAP)) {
        c.flags |= LIBNBD_CMD_FLAG_NO_HOLE;
    }
    if (flags & REQ_NO_FALLBACK) {
        c.flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
    }
    return bytes ? nbd_co_cmd(s, &c) : 0;
}

static int coroutine_fn nbd_co_pdiscard(BlockNode *bs, int64_t offset,
                                        int64_t bytes)
{
    NbdState *s = bs->opaque;
    /* As QEMU: a server that cannot trim makes trimming a no-op. */
    if (!s->can_trim || !bytes) {
        return 0;
    }
    NbdCmd c = { .type = CMD_TRIM, .offset = offset, .bytes = bytes };
    return nbd_co_cmd(s, &c);
}

static int coroutine_fn nbd_co_flush(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    if (!s->can_flush) {
        return 0;
    }
    NbdCmd c = { .type = CMD_FLUSH };
    return nbd_co_cmd(s, &c);
}

static int coroutine_fn nbd_co_block_status(BlockNode *bs, bool want_zero,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockNode **file)
{
    NbdState *s = bs->opaque;
    uint32_t align = bs->bl.request_alignment ? bs->bl.request_alignment : 1;

    *map = offset;
    *file = bs;
    if (!s->has_status) {
        *pnum = bytes;
        return BLOCK_DATA | BLOCK_OFFSET_VALID;
    }
    NbdCmd c = {
        .type = CMD_STATUS, .offset = offset,
        .bytes = MIN((uint64_t)bytes, (uint64_t)(s->size - offset)),
        .context = s->bitmap ? s->bitmap : LIBNBD_CONTEXT_BASE_ALLOCATION,
    };
    c.bytes = MIN(c.bytes, (uint64_t)(G_MAXINT / align * align));
    int ret = nbd_co_cmd(s, &c);
    if (ret < 0) {
        return ret;
    }
    if (!c.got_extent || !c.ext_len) {
        return -EIO;      /* "Server did not reply with any status extents" */
    }
    uint64_t len = MIN((uint64_t)c.ext_len, c.bytes);
    uint32_t fl = c.ext_flags;
    /*
     * qemu:allocation-depth read as block status: QEMU keeps depths 0, 1
     * and 2 as they are and reads any deeper one as 2, so that qemu-img
     * map shows unallocated, here and below apart (iotest
     * nbd-qemu-allocation).
     */
    if (s->bitmap && !strcmp(s->bitmap, "qemu:allocation-depth") && fl > 2) {
        fl = 2;
    }
    /* A server breaking its own minimum block size: round as QEMU does. */
    if (s->min_block && len % s->min_block) {
        if (len > s->min_block) {
            len -= len % s->min_block;
        } else {
            len = s->min_block;
            fl = 0;
        }
    }
    *pnum = (int64_t)len;
    return (fl & LIBNBD_STATE_HOLE ? 0 : BLOCK_DATA) |
           (fl & LIBNBD_STATE_ZERO ? BLOCK_ZERO : 0) | BLOCK_OFFSET_VALID;
}

static int64_t nbd_getlength(BlockNode *bs)
{
    return ((NbdState *)bs->opaque)->size;
}

/* NBD cannot resize; asking for what is there already is fine. */
static int coroutine_fn nbd_co_truncate(BlockNode *bs, int64_t offset,
                                        bool exact, PreallocMode prealloc,
                                        GError **errp)
{
    NbdState *s = bs->opaque;
    if (offset != s->size && exact) {
        error_setg(errp, "Cannot resize NBD nodes");
        return -ENOTSUP;
    }
    if (offset > s->size) {
        error_setg(errp, "Cannot grow NBD nodes");
        return -EINVAL;
    }
    return 0;
}

/* ---- Open and close ---- */

typedef struct {
    NbdState *s;
    GError **errp;
    int ret;
} OpenCo;

static void open_co(void *opaque)
{
    OpenCo *o = opaque;
    NbdState *s = o->s;
    int64_t deadline = s->open_timeout
        ? clock_ns() + (int64_t)s->open_timeout * 1000000000LL : -1;
    int64_t backoff = 1000000000LL;

    /* With open-timeout, QEMU keeps trying (1, 2, 4 .. 16 s apart). */
    for (;;) {
        GError *err = NULL;
        o->ret = connect_once(&s->links[0], deadline, &err);
        if (o->ret == 0) {
            return;
        }
        int64_t left = deadline - clock_ns();
        if (!s->open_timeout || left <= 0) {
            g_propagate_error(o->errp, err);
            return;
        }
        g_clear_error(&err);
        reconnect_sleep(&s->links[0], MIN(backoff, left));
        backoff = MIN(backoff * 2, RECONNECT_BACKOFF_MAX_NS);
    }
}

static void nbd_free_state(NbdState *s)
{
    g_free(s->addr.path);
    g_free(s->addr.host);
    g_free(s->addr.port);
    g_free(s->export);
    g_free(s->bitmap);
}

static int nbd_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    NbdState *s = bs->opaque;
    s->bs = bs;
    co_queue_init(&s->waiters);
    for (int i = 0; i < NBD_MAX_CONNS; i++) {
        s->links[i].s = s;
        s->links[i].conn.fd = -1;
    }
    s->nlinks = 1;

    if (!take_options(s, options, errp)) {
        nbd_free_state(s);
        return -EINVAL;
    }
    if (!nbd_lib_load(errp)) {
        nbd_free_state(s);
        return -ENOTSUP;
    }
    OpenCo o = { .s = s, .errp = errp };
    if (in_coroutine()) {
        open_co(&o);
    } else {
        co_run_sync(open_co, &o);
    }
    if (o.ret < 0) {
        nbd_free_state(s);
        return o.ret;
    }
    GError *err = NULL;
    if (!take_server_info(&s->links[0], true, &err)) {
        g_propagate_error(errp, err);
        goto fail;
    }
    if (s->bitmap && !s->has_status) {
        /* QEMU's "requested x-dirty-bitmap %s not found" is lost on the way. */
        error_setg_errno(errp, EINVAL, "Could not open image");
        goto fail;
    }
    if (s->read_only && (flags & NODE_O_RDWR)) {
        if (!bs->auto_read_only) {
            /* QEMU loses its "NBD export is read-only" on the way. */
            error_setg_errno(errp, EACCES, "Could not open image");
            goto fail;
        }
        bs->read_only = true;
        bs->open_flags &= ~NODE_O_RDWR;
    }
    if (s->can_fua) {
        bs->supported_write_flags = REQ_FUA;
        bs->supported_zero_flags |= REQ_FUA;
    }
    if (s->can_zero) {
        bs->supported_zero_flags |= REQ_MAY_UNMAP;
        if (s->can_fast_zero) {
            bs->supported_zero_flags |= REQ_NO_FALLBACK;
        }
    }
    s->links[0].state = LINK_CONNECTED;
    /*
     * More connections only where the server says that what one completes
     * is seen by all (writes, and flushes covering them), as the spread
     * of requests and flushes over them needs.
     */
    if (s->can_multi_conn) {
        s->nlinks = (int)s->want_conns;
        for (int i = 1; i < s->nlinks; i++) {
            s->links[i].state = LINK_CONNECTING;
            s->links[i].reconnecting = true;
            co_wake(co_create(extra_connect_co, &s->links[i]));
        }
    }
    return 0;

fail:
    nbd_conn_close(&s->links[0].conn, true);
    nbd_free_state(s);
    return -EINVAL;
}

static void nbd_close_node(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    s->closing = true;
    for (int i = 0; i < s->nlinks; i++) {
        NbdLink *l = &s->links[i];
        if (l->reconnect_sleep) {
            nbd_wait_wake(l->reconnect_sleep);
        }
        if (l->conn.waiter) {
            nbd_wait_wake(l->conn.waiter);
        }
        /* The (re)connection coroutine sees `closing` at its next step. */
        LOOP_WAIT_WHILE(l->reconnecting);
        end_wait(l);
        nbd_conn_close(&l->conn, true);
    }
    nbd_free_state(s);
}

static void nbd_refresh_limits(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    uint32_t min = s->min_block;
    uint64_t max = s->max_block ? MIN(s->max_block, NBD_MAX_TRANSFER)
                                : NBD_MAX_TRANSFER;
    /*
     * Without a minimum from the server, QEMU's rule: byte granularity if
     * the size is not whole sectors or block status may report sub-sector
     * extents, else sectors (an old server may not cope with less).
     */
    if (!min) {
        min = (s->size % 512 || s->has_status) ? 1 : 512;
    }
    bs->bl.request_alignment = min;
    bs->bl.max_transfer = max;
    bs->bl.max_pwrite_zeroes = max;
    bs->bl.max_pdiscard = (G_MAXINT / min) * min;
    if (s->opt_block > bs->bl.opt_transfer) {
        bs->bl.opt_transfer = s->opt_block;
    }
}

static void nbd_refresh_filename(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    char *name = nbd_make_filename(&s->addr, s->export);
    if (strlen(name) < sizeof(bs->filename)) {
        g_strlcpy(bs->filename, name, sizeof(bs->filename));
    }
    g_free(name);
}

static int nbd_reopen_prepare(ReopenState *rs, GError **errp)
{
    NbdState *s = rs->bs->opaque;
    if (!rs->read_only && s->read_only) {
        error_setg(errp, "Can't reopen read-only NBD mount as read/write");
        return -EACCES;
    }
    return 0;
}

/*
 * "Creating" an image on an NBD export (qemu-img create/convert onto one)
 * is QEMU's generic fallback for protocols: open it, check it is big
 * enough, and zero its first sector so that nothing old is probed.
 */
static const char *const nbd_create_opts[] = { "size", "preallocation", NULL };

typedef struct {
    BlockBackend *blk;
    int ret;
} ZeroCo;

static void zero_first_sector_co(void *opaque)
{
    ZeroCo *z = opaque;
    z->ret = blk_co_pwrite_zeroes(z->blk, 0, 512, REQ_MAY_UNMAP);
}

static int nbd_img_create(const char *filename, json_t *options, GError **errp)
{
    uint64_t size = 0;
    int prealloc = PREALLOC_MODE_OFF;
    GError *err = NULL;

    if (!opts_take_size(options, "size", &size, errp) ||
        !opts_take_enum(options, "preallocation", prealloc_mode_names,
                        &prealloc, errp)) {
        return -EINVAL;
    }
    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Unsupported preallocation mode '%s'",
                   prealloc_mode_names[prealloc]);
        return -ENOTSUP;
    }
    json_t *o = json_object();
    json_object_set_new(o, "driver", json_string("nbd"));
    if (!nbd_parse_filename(filename, o, &err)) {
        json_decref(o);
        g_propagate_prefixed_error(errp, err, "Protocol driver 'nbd' does not "
                                   "support image creation, and opening the "
                                   "image failed: ");
        return -EINVAL;
    }
    BlockBackend *blk = blk_new_open(NULL, o, NODE_O_RDWR, &err);
    if (!blk) {
        g_propagate_prefixed_error(errp, err, "Protocol driver 'nbd' does not "
                                   "support image creation, and opening the "
                                   "image failed: ");
        return -EINVAL;
    }
    int64_t len = blk_getlength(blk);
    int ret = 0;
    if (len >= 0 && (uint64_t)len < size) {
        /* What truncating to the size says (QEMU's fallback does that). */
        error_setg(errp, "Cannot grow NBD nodes");
        ret = -EINVAL;
    } else if (len > 0) {
        ZeroCo z = { blk, 0 };
        if (in_coroutine()) {
            zero_first_sector_co(&z);
        } else {
            co_run_sync(zero_first_sector_co, &z);
        }
        if (z.ret < 0) {
            error_setg_errno(errp, -z.ret, "Failed to clear the new image's "
                             "first sector");
            ret = z.ret;
        }
    }
    blk_unref(blk);
    return ret;
}

/*
 * A force-cancelled job stops waiting for the server (QEMU's
 * nbd_cancel_in_flight): a link within its reconnect-delay gives up the
 * wait as if the delay had run out, so the requests queued for it fail
 * now; reconnection goes on in the background.
 */
static void nbd_cancel_in_flight(BlockNode *bs)
{
    NbdState *s = bs->opaque;
    for (int i = 0; i < s->nlinks; i++) {
        if (s->links[i].state == LINK_WAIT) {
            end_wait(&s->links[i]);
        }
    }
}

/*
 * QEMU registers the driver three times, once per URI scheme, all with
 * the format name "nbd"; driver=nbd finds the last one registered, whose
 * protocol name is "nbd+unix" (qemu-io's `info` shows it).  The registry
 * keeps that order: driver_find("nbd") is nbd_unix.
 */
#define NBD_DRIVER_COMMON                                                     \
    .format_name = "nbd",                                                     \
    .main_loop_only = true,                                                   \
    .instance_size = sizeof(NbdState),                                        \
    .parse_filename = nbd_parse_filename,                                     \
    .open = nbd_open,                                                         \
    .close = nbd_close_node,                                                  \
    .refresh_limits = nbd_refresh_limits,                                     \
    .refresh_filename = nbd_refresh_filename,                                 \
    .create = nbd_img_create,                                                     \
    .create_opts = nbd_create_opts,                                           \
    .reopen_prepare = nbd_reopen_prepare,                                     \
    .co_preadv = nbd_co_preadv,                                               \
    .co_pwritev = nbd_co_pwritev,                                             \
    .co_pwrite_zeroes = nbd_co_pwrite_zeroes,                                 \
    .co_pdiscard = nbd_co_pdiscard,                                           \
    .co_flush_to_disk = nbd_co_flush,                                         \
    .co_truncate = nbd_co_truncate,                                           \
    .co_block_status = nbd_co_block_status,                                   \
    .cancel_in_flight = nbd_cancel_in_flight,                                 \
    .getlength = nbd_getlength

const BlockDriver bdrv_nbd = {
    .protocol_name = "nbd",
    NBD_DRIVER_COMMON,
};

const BlockDriver bdrv_nbd_tcp = {
    .protocol_name = "nbd+tcp",
    NBD_DRIVER_COMMON,
};

const BlockDriver bdrv_nbd_unix = {
    .protocol_name = "nbd+unix",
    NBD_DRIVER_COMMON,
};
