/*
 * One libnbd connection driven by the thread's event loop.
 *
 * libnbd's asynchronous API is a state machine that never blocks: it says
 * which way it wants the socket to become ready (nbd_aio_get_direction) and
 * is told when it is (nbd_aio_notify_read/write).  The socket is watched by
 * a GSource in the loop's GMainContext whose condition follows that
 * direction after every notification and every command submitted.  The
 * socket is ours (nbd-socket.c connects it); libnbd closes it when the
 * connection dies, so the watch follows nbd_aio_get_fd() too.
 */
#include <errno.h>
#include <string.h>
#include "nbd-int.h"

/* ---- Waiting with a timeout ---- */

static gboolean nbd_wait_timer_cb(gpointer opaque)
{
    NbdWait *w = opaque;
    w->timed_out = true;
    nbd_wait_wake(w);
    return G_SOURCE_REMOVE;
}

void coroutine_fn nbd_wait(NbdWait *w, int64_t timeout_ns)
{
    w->co = co_self();
    w->pending = true;
    w->timed_out = false;
    w->timer = NULL;
    if (timeout_ns >= 0) {
        /* Whole milliseconds, rounded up so that a deadline is never early. */
        w->timer = g_timeout_source_new((guint)MIN((timeout_ns + 999999) / 1000000,
                                                   G_MAXUINT));
        g_source_set_callback(w->timer, nbd_wait_timer_cb, w, NULL);
        g_source_attach(w->timer, loop_context(loop_get()));
    }
    /*
     * The timer and whoever may call nbd_wait_wake() (the socket watch, a
     * connect's fd source, closing the node) hold w until one of them
     * clears pending.  An entry before that (a co_wake() left over from an
     * earlier wait) must not return with the timer still armed on this
     * frame: it waits on, as QEMU's reconnect sleep does.
     */
    while (w->pending) {
        co_yield();
    }
}

void nbd_wait_wake(NbdWait *w)
{
    if (!w->pending) {
        return;
    }
    w->pending = false;
    if (w->timer) {
        g_source_destroy(w->timer);
        g_source_unref(w->timer);
        w->timer = NULL;
    }
    co_wake(w->co);
}

/* ---- The socket watch ---- */

typedef struct {
    GSource base;
    NbdConn *conn;
} NbdSource;

static void conn_record_error(NbdConn *c)
{
    g_free(c->err);
    c->err = g_strdup(nbd_lib.get_error() ? nbd_lib.get_error() : "");
    c->err_errno = nbd_lib.get_errno() ? nbd_lib.get_errno() : EIO;
}

static gboolean nbd_source_dispatch(GSource *src, GSourceFunc cb, gpointer d)
{
    NbdConn *c = ((NbdSource *)src)->conn;
    GIOCondition rev = c->tag ? g_source_query_unix_fd(src, c->tag) : 0;
    unsigned dir = nbd_lib.aio_get_direction(c->h);
    int r = 0;

    /*
     * A hang-up or error is given to whichever side libnbd is waiting on,
     * so that it sees the failure in its own read() or write().
     */
    if ((rev & (G_IO_IN | G_IO_HUP | G_IO_ERR)) &&
        (dir & LIBNBD_AIO_DIRECTION_READ)) {
        r = nbd_lib.aio_notify_read(c->h);
    } else if ((rev & (G_IO_OUT | G_IO_HUP | G_IO_ERR)) &&
               (dir & LIBNBD_AIO_DIRECTION_WRITE)) {
        r = nbd_lib.aio_notify_write(c->h);
    }
    if (r < 0) {
        conn_record_error(c);
    }
    nbd_conn_kick(c);
    if (c->waiter) {
        nbd_wait_wake(c->waiter);
    }
    if (c->connected && !nbd_conn_alive(c) && c->on_dead) {
        /* Once only: later dispatches see no socket and never get here. */
        c->connected = false;
        c->on_dead(c->opaque);
    }
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs nbd_source_funcs = {
    .dispatch = nbd_source_dispatch,
};

bool nbd_conn_alive(NbdConn *c)
{
    return c->h && !nbd_lib.aio_is_dead(c->h) && !nbd_lib.aio_is_closed(c->h);
}

void nbd_conn_kick(NbdConn *c)
{
    if (!c->h || !c->src) {
        return;
    }
    int fd = nbd_lib.aio_is_dead(c->h) || nbd_lib.aio_is_closed(c->h)
                 ? -1 : nbd_lib.aio_get_fd(c->h);
    if (fd != c->fd && c->tag) {
        g_source_remove_unix_fd(c->src, c->tag);
        c->tag = NULL;
    }
    c->fd = fd;
    if (fd < 0) {
        return;
    }
    unsigned dir = nbd_lib.aio_get_direction(c->h);
    GIOCondition cond = 0;
    if (dir & LIBNBD_AIO_DIRECTION_READ) {
        cond |= G_IO_IN;
    }
    if (dir & LIBNBD_AIO_DIRECTION_WRITE) {
        cond |= G_IO_OUT;
    }
    if (!c->tag) {
        c->tag = g_source_add_unix_fd(c->src, fd, cond);
    } else {
        g_source_modify_unix_fd(c->src, c->tag, cond);
    }
}

/* ---- Connecting ---- */

/*
 * Turn libnbd's handshake failure into QEMU's words where a script could
 * see them (an export the server does not have); otherwise libnbd's own,
 * without the name of the libnbd function in front.
 */
static void set_connect_error(NbdConn *c, const NbdConnectParams *p,
                              GError **errp)
{
    const char *msg = c->err ? c->err : "";
    int err = c->err_errno ? c->err_errno : EIO;
    const char *step = strstr(msg, ": ");
    step = step ? step + 2 : msg;

    if (err == ENOENT && strstr(step, "no export named")) {
        error_setg(errp, "Requested export not available\n"
                   "server reported: export '%s' not present",
                   p->export ? p->export : "");
    } else if (strstr(step, "disconnected") || err == ECONNRESET ||
               err == EPIPE) {
        /* The server went away in the middle: QEMU's "Failed to read ...". */
        error_setg(errp, "Failed to read from the server during negotiation: "
                   "Unexpected end-of-file before all data were read");
    } else {
        error_setg(errp, "%s", step[0] ? step : g_strerror(err));
    }
}

static bool configure(struct nbd_handle *h, const NbdConnectParams *p)
{
    return nbd_lib.set_export_name(h, p->export ? p->export : "") == 0 &&
           nbd_lib.add_meta_context(h, p->meta_context) == 0 &&
           /* Every read is checked for errors: no need to clear buffers. */
           nbd_lib.set_pread_initialize(h, false) == 0;
}

/* Fresh handle and watch; false with errp set if libnbd refuses. */
static bool conn_init(NbdConn *c, const NbdConnectParams *p, GError **errp)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->h = nbd_lib.create();
    if (!c->h) {
        error_setg(errp, "%s", nbd_lib.get_error());
        return false;
    }
    NbdSource *ns = (NbdSource *)g_source_new(&nbd_source_funcs,
                                              sizeof(NbdSource));
    ns->conn = c;
    c->src = &ns->base;
    g_source_attach(c->src, loop_context(loop_get()));
    if (!configure(c->h, p)) {
        conn_record_error(c);
        error_setg(errp, "%s", c->err);
        return false;
    }
    return true;
}

/* Run the handshake libnbd has started until it is ready or fails. */
static int coroutine_fn conn_handshake(NbdConn *c, const NbdConnectParams *p,
                                       int64_t deadline_ns, GError **errp)
{
    for (;;) {
        nbd_conn_kick(c);
        if (nbd_lib.aio_is_ready(c->h)) {
            return 0;
        }
        if (!nbd_conn_alive(c)) {
            if (!c->err) {
                c->err = g_strdup("Connection closed");
                c->err_errno = ECONNRESET;
            }
            set_connect_error(c, p, errp);
            return -ECONNREFUSED;
        }
        if (p->cancel && *p->cancel) {
            error_setg(errp, "Connection attempt cancelled");
            return -ECANCELED;
        }
        int64_t left = -1;
        if (deadline_ns >= 0) {
            left = deadline_ns - clock_ns();
            if (left <= 0) {
                error_setg(errp, "Connection attempt cancelled by timeout");
                return -ETIMEDOUT;
            }
        }
        NbdWait w;
        c->waiter = &w;
        nbd_wait(&w, left);
        c->waiter = NULL;
    }
}

int coroutine_fn nbd_conn_connect(NbdConn *c, const NbdConnectParams *p,
                                  int64_t deadline_ns, GError **errp)
{
    NbdRelay *relay = NULL;
    int ret = -ENOMEM;

    if (!conn_init(c, p, errp)) {
        goto fail;
    }
    ret = -ECONNREFUSED;
    int fd = nbd_socket_open(p->addr, deadline_ns, &c->waiter, p->cancel,
                             &relay, errp);
    if (fd < 0) {
        goto fail;
    }
    if (nbd_lib.aio_connect_socket(c->h, fd) < 0) {
        conn_record_error(c);
        set_connect_error(c, p, errp);
        goto fail;
    }
    ret = conn_handshake(c, p, deadline_ns, errp);
    if (ret < 0) {
        goto fail;
    }
    if (relay) {
        bool ok = nbd_relay_switch(relay, nbd_lib.aio_get_fd(c->h), errp);
        relay = NULL;
        if (!ok) {
            ret = -EIO;
            goto fail;
        }
    }
    c->connected = true;
    return 0;

fail:
    if (relay) {
        nbd_relay_free(relay);
    }
    nbd_conn_close(c, false);
    return ret;
}

void nbd_conn_close(NbdConn *c, bool graceful)
{
    if (!c->h) {
        return;
    }
    if (graceful && nbd_lib.aio_is_ready(c->h)) {
        /* Queues NBD_CMD_DISC and writes it at once if the socket lets it. */
        nbd_lib.aio_disconnect(c->h, 0);
    }
    if (c->src) {
        g_source_destroy(c->src);
        g_source_unref(c->src);
        c->src = NULL;
        c->tag = NULL;
    }
    nbd_lib.close(c->h);
    c->h = NULL;
    c->connected = false;
    g_free(c->err);
    c->err = NULL;
    c->fd = -1;
}
