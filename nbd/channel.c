/* Coroutine I/O on a non-blocking socket (see channel.h). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <glib.h>
#include <glib-unix.h>
#include "strata/loop.h"
#include "channel.h"
#include "spin.h"

#define RBUF_SIZE (64 * 1024)

/*
 * The longest busy wait for a client's next request (spin.h).  A client
 * that keeps one request in flight sends the next one as soon as it has
 * taken our reply: tens of microseconds on an idle machine.  Longer gaps
 * are not worth a CPU spinning through them.
 */
#define SPIN_MAX_NS (128 * 1000)
#define SPIN_MIN_NS (8 * 1000)
/*
 * Requests after a spin that missed before the gap is measured again.  A
 * miss is what a busy machine looks like (the client waited for a CPU,
 * perhaps for the one we kept busy): most of the time the loop sleeps
 * there, as without the spin.
 */
#define SPIN_BACKOFF 16

typedef struct {
    GSource base;
    NbdChannel *ch;
} ChannelSource;

struct NbdChannel {
    int fd;
    bool shut;
    ChannelSource *src;
    gpointer tag;
    Coroutine *reader, *writer;
    GIOCondition watched;   /* what the loop polls the socket for */
    uint8_t *rbuf;
    size_t rpos, rlen;
    /* The last read left the socket empty: poll before reading again. */
    bool drained;
    /*
     * How long the loop busy-waits for the next request once the socket
     * is empty (0: it sleeps at once): twice the last gap measured
     * asleep, if that was at most SPIN_MAX_NS; after a miss, 0 for
     * spin_off requests.
     */
    int64_t spin_ns;
    unsigned spin_off;
    unsigned inflight;      /* requests taken, not yet answered */
};

/*
 * Change what the loop polls for.  glib wakes the loop's context (an
 * eventfd write, and a read plus an extra poll() later) on every change,
 * so the hot path avoids them: a reader that goes back to waiting finds
 * G_IO_IN still asked for (see channel_dispatch).
 */
static void channel_set_watch(NbdChannel *ch, GIOCondition cond)
{
    if (ch->src && cond != ch->watched) {
        g_source_modify_unix_fd(&ch->src->base, ch->tag, cond);
        ch->watched = cond;
    }
}

/* Ask the loop only for the directions a coroutine is waiting on. */
static void channel_update_watch(NbdChannel *ch)
{
    channel_set_watch(ch, (ch->reader ? G_IO_IN : 0) |
                          (ch->writer ? G_IO_OUT : 0));
}

static gboolean channel_dispatch(GSource *src, GSourceFunc cb, gpointer d)
{
    NbdChannel *ch = ((ChannelSource *)src)->ch;
    GIOCondition rev = g_source_query_unix_fd(src, ch->tag);
    Coroutine *r = NULL, *w = NULL;

    /* A hang-up or error wakes both sides: each sees it in its own call. */
    if (ch->reader && (rev & (G_IO_IN | G_IO_HUP | G_IO_ERR))) {
        r = ch->reader;
        ch->reader = NULL;
    }
    if (ch->writer && (rev & (G_IO_OUT | G_IO_HUP | G_IO_ERR))) {
        w = ch->writer;
        ch->writer = NULL;
    }
    /*
     * A woken reader keeps G_IO_IN asked for: it reads, and most often
     * waits again, before the loop polls next.  Readable with no reader
     * (it waits for a request slot) would make the loop spin: dropped.
     * A socket is nearly always writable, so G_IO_OUT goes at once.
     */
    channel_set_watch(ch, ((r || ch->reader) ? (ch->watched & G_IO_IN) : 0) |
                          (ch->writer ? G_IO_OUT : 0));
    if (r) {
        co_wake(r);
    }
    if (w) {
        co_wake(w);
    }
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs channel_source_funcs = {
    .dispatch = channel_dispatch,
};

NbdChannel *nbd_channel_new(int fd)
{
    NbdChannel *ch = g_new0(NbdChannel, 1);
    int fl = fcntl(fd, F_GETFL);

    if (fl >= 0) {
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    ch->fd = fd;
    ch->rbuf = g_malloc(RBUF_SIZE);
    ch->src = (ChannelSource *)g_source_new(&channel_source_funcs,
                                            sizeof(ChannelSource));
    ch->src->ch = ch;
    ch->tag = g_source_add_unix_fd(&ch->src->base, fd, 0);
    g_source_set_can_recurse(&ch->src->base, TRUE);
    g_source_attach(&ch->src->base, loop_context(loop_get()));
    return ch;
}

void nbd_channel_free(NbdChannel *ch)
{
    if (!ch) {
        return;
    }
    g_assert(!ch->reader && !ch->writer);
    nbd_channel_detach(ch);
    close(ch->fd);
    g_free(ch->rbuf);
    g_free(ch);
}

/* Yield until the socket is ready in one direction (or shut down). */
static void coroutine_fn channel_wait(NbdChannel *ch, bool for_write)
{
    Coroutine *self = co_self();
    Coroutine **slot = for_write ? &ch->writer : &ch->reader;

    g_assert(!*slot);
    *slot = self;
    channel_set_watch(ch, ch->watched | (for_write ? G_IO_OUT : G_IO_IN));
    /*
     * Only channel_dispatch() and nbd_channel_shutdown() end the wait, and
     * they clear the slot first.  An entry before that (a co_wake() left
     * over from an earlier wait) waits on: returning would leave the slot
     * taken for the next wait.  (QEMU's qio_channel_yield() lets such an
     * entry interrupt the wait on purpose; nothing here does that.)
     */
    while (*slot == self) {
        co_yield();
    }
}

/* Wait for the next request on an empty socket, busy for a while. */
static void coroutine_fn channel_wait_request(NbdChannel *ch)
{
    int64_t start = clock_ns();
    /* cut to the loop thread's poll-max-ns (0: never spin) */
    int64_t window = nbd_spin_window(ch->spin_ns, start, ch->inflight);

    if (window) {
        nbd_spin_until(start + window);
    }
    channel_wait(ch, false);
    int64_t waited = clock_ns() - start;
    if (window) {
        if (waited > window) {
            NBD_SPIN_STAT_ADD(misses, 1);
            ch->spin_ns = 0;
            ch->spin_off = SPIN_BACKOFF;
        } else {
            NBD_SPIN_STAT_ADD(hits, 1);
        }
    } else if (ch->spin_off) {
        ch->spin_off--;
    } else if (waited <= SPIN_MAX_NS) {
        /* Asleep, the gap includes our wake-up: a generous window. */
        ch->spin_ns = MIN(SPIN_MAX_NS, MAX(SPIN_MIN_NS, 2 * waited));
    }
}

void nbd_channel_request_begin(NbdChannel *ch)
{
    ch->inflight++;
    nbd_spin_request_begin(ch);
}

void nbd_channel_request_end(NbdChannel *ch)
{
    g_assert(ch->inflight);
    ch->inflight--;
    nbd_spin_request_end(ch, clock_ns());
}

void nbd_channel_shutdown(NbdChannel *ch)
{
    Coroutine *r = ch->reader, *w = ch->writer;

    if (ch->shut) {
        return;
    }
    ch->shut = true;
    shutdown(ch->fd, SHUT_RDWR);
    ch->reader = ch->writer = NULL;
    channel_update_watch(ch);
    if (r) {
        co_wake(r);
    }
    if (w) {
        co_wake(w);
    }
}

void nbd_channel_detach(NbdChannel *ch)
{
    g_assert(!ch->reader && !ch->writer);
    if (ch->src) {
        g_source_destroy(&ch->src->base);
        g_source_unref(&ch->src->base);
        ch->src = NULL;
    }
}

void nbd_channel_attach_here(NbdChannel *ch)
{
    g_assert(!ch->src);
    ch->src = (ChannelSource *)g_source_new(&channel_source_funcs,
                                            sizeof(ChannelSource));
    ch->src->ch = ch;
    ch->tag = g_source_add_unix_fd(&ch->src->base, ch->fd, 0);
    ch->watched = 0;
    g_source_set_can_recurse(&ch->src->base, TRUE);
    g_source_attach(&ch->src->base, loop_context(loop_get()));
}

void nbd_channel_shutdown_remote(NbdChannel *ch)
{
    shutdown(ch->fd, SHUT_RDWR);
}

bool nbd_channel_is_shut_down(const NbdChannel *ch)
{
    return ch->shut;
}

bool nbd_channel_input_pending(const NbdChannel *ch)
{
    struct pollfd p = { .fd = ch->fd, .events = POLLIN };

    return !ch->shut && poll(&p, 1, 0) > 0 && p.revents;
}

/* Some bytes into buf: >0, 0 at end of file, -EIO; yields while none. */
static ssize_t coroutine_fn channel_recv_some(NbdChannel *ch, void *buf,
                                              size_t len)
{
    for (;;) {
        if (ch->shut) {
            return -EIO;
        }
        ssize_t n = recv(ch->fd, buf, len, 0);
        if (n >= 0) {
            return n;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            return -EIO;
        }
        channel_wait(ch, false);
    }
}

int coroutine_fn nbd_channel_read(NbdChannel *ch, void *buf, size_t len)
{
    uint8_t *p = buf;
    bool partial = false;

    while (len) {
        if (ch->rpos < ch->rlen) {
            size_t n = MIN(len, ch->rlen - ch->rpos);
            memcpy(p, ch->rbuf + ch->rpos, n);
            ch->rpos += n;
            p += n;
            len -= n;
            partial = true;
            continue;
        }
        ssize_t n;
        if (len >= RBUF_SIZE) {
            /* A payload: no point in copying it through the buffer. */
            n = channel_recv_some(ch, p, len);
            if (n > 0) {
                p += n;
                len -= n;
            }
        } else {
            /*
             * A short read emptied the socket: the next request is rarely
             * there yet, and a recv() that fails with EAGAIN is a system
             * call per request for nothing.
             */
            if (ch->drained && !ch->shut) {
                channel_wait_request(ch);
            }
            n = channel_recv_some(ch, ch->rbuf, RBUF_SIZE);
            if (n > 0) {
                ch->rpos = 0;
                ch->rlen = n;
                nbd_spin_note_request(ch, clock_ns());
            }
            ch->drained = n > 0 && n < RBUF_SIZE;
        }
        if (n < 0) {
            return -EIO;
        }
        if (n == 0) {
            return partial ? -EIO : 0;
        }
        partial = true;
    }
    return 1;
}

int coroutine_fn nbd_channel_skip(NbdChannel *ch, size_t len)
{
    uint8_t scratch[4096];

    while (len) {
        size_t n = MIN(len, sizeof(scratch));
        if (nbd_channel_read(ch, scratch, n) != 1) {
            return -EIO;
        }
        len -= n;
    }
    return 0;
}

int coroutine_fn nbd_channel_writev(NbdChannel *ch, const struct iovec *iov,
                                    int niov)
{
    struct iovec local[8];
    struct iovec *v = niov <= 8 ? local : g_new(struct iovec, niov);
    int ret = 0;

    memcpy(v, iov, niov * sizeof(*v));
    struct iovec *cur = v;
    int left = niov;
    while (left > 0) {
        if (cur->iov_len == 0) {
            cur++;
            left--;
            continue;
        }
        if (ch->shut) {
            ret = -EIO;
            break;
        }
        struct msghdr msg = { .msg_iov = cur, .msg_iovlen = left };
        ssize_t n = sendmsg(ch->fd, &msg, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                channel_wait(ch, true);
                continue;
            }
            ret = -EIO;
            break;
        }
        while (n > 0) {
            size_t k = MIN((size_t)n, cur->iov_len);
            cur->iov_base = (uint8_t *)cur->iov_base + k;
            cur->iov_len -= k;
            n -= k;
            if (cur->iov_len == 0) {
                cur++;
                left--;
            }
        }
    }
    if (v != local) {
        g_free(v);
    }
    return ret;
}

int nbd_channel_fd(const NbdChannel *ch)
{
    return ch->fd;
}

int coroutine_fn nbd_channel_wait_writable(NbdChannel *ch)
{
    if (ch->shut) {
        return -EIO;
    }
    channel_wait(ch, true);
    return ch->shut ? -EIO : 0;
}

int coroutine_fn nbd_channel_write(NbdChannel *ch, const void *buf,
                                   size_t len)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    return nbd_channel_writev(ch, &iov, 1);
}
