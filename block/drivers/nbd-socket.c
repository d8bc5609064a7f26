/*
 * The socket libnbd talks through, connected by us.
 *
 * libnbd could connect by itself, but it refuses servers QEMU accepts:
 * those too old to know about transmission flags, which send 0 where the
 * flags go ("invalid eflags == 0 from server").  Only two kinds of server
 * can do that: old-style ("classic") ones, whose one greeting is magic,
 * size, flags and padding, and newstyle ones without the "fixed newstyle"
 * bit, with which the only possible option is EXPORT_NAME, answered with
 * size, flags and padding.  In both, the flags are bytes 26-27 of what the
 * server sends.  Such servers often serve one client at a time, so a second
 * attempt is no answer.
 *
 * So we connect, peek at the greeting, and hand any other server's socket
 * to libnbd as it is.  For these two, libnbd gets one end of a socket pair
 * and the handshake is relayed both ways, with bytes 26-27 set to
 * HAS_FLAGS ("no optional features": no flush, no FUA, as QEMU then
 * assumes) if they are 0.  Once libnbd is ready, neither side has anything
 * more to say until the first request, and dup2() puts the server's socket
 * in place of libnbd's end: from then on libnbd talks to the server on the
 * same descriptor number with nothing in between.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <glib-unix.h>
#include "nbd-int.h"

static const uint8_t nbd_magic[8] = { 'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C' };
static const uint8_t cliserv_magic[8] = { 0x00, 0x00, 0x42, 0x02,
                                          0x81, 0x86, 0x12, 0x53 };
static const uint8_t opts_magic[8] = { 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T' };

static gboolean fd_ready_cb(gint fd, GIOCondition cond, gpointer opaque)
{
    nbd_wait_wake(opaque);
    return G_SOURCE_REMOVE;
}

/*
 * How long a connection attempt may wait, and how closing the node stops
 * it: while waiting, *slot points at the wait, so that whoever sets
 * *cancel can wake it (the node's connection waiter).
 */
typedef struct {
    int64_t deadline;        /* clock_ns(); < 0: none */
    NbdWait **slot;
    const bool *cancel;
} SockWait;

/* Wait until fd is ready for cond: 0, ETIMEDOUT or ECANCELED. */
static int coroutine_fn wait_fd(int fd, GIOCondition cond, const SockWait *sw)
{
    NbdWait w;
    GSource *src = g_unix_fd_source_new(fd, cond | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(src, (GSourceFunc)(void (*)(void))fd_ready_cb, &w,
                          NULL);
    g_source_attach(src, loop_context(loop_get()));
    if (sw->slot) {
        *sw->slot = &w;
    }
    nbd_wait(&w, sw->deadline < 0 ? -1 : MAX(sw->deadline - clock_ns(), 0));
    if (sw->slot) {
        *sw->slot = NULL;
    }
    g_source_destroy(src);
    g_source_unref(src);
    if (sw->cancel && *sw->cancel) {
        return ECANCELED;
    }
    return w.timed_out ? ETIMEDOUT : 0;
}

static void set_wait_error(int err, GError **errp)
{
    error_setg(errp, err == ECANCELED ? "Connection attempt cancelled"
                                      : "Connection attempt cancelled by "
                                        "timeout");
}

/* One non-blocking connect; 0 or an errno. */
static int coroutine_fn try_connect(int fd, const struct sockaddr *sa,
                                    socklen_t salen, const SockWait *sw)
{
    if (connect(fd, sa, salen) == 0) {
        return 0;
    }
    int err = errno;
    if (err == EINPROGRESS) {
        socklen_t len = sizeof(err);
        err = wait_fd(fd, G_IO_OUT, sw);
        if (!err && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
            err = errno;
        }
    }
    return err;
}

/* Connect to the server as QEMU does: each address in turn; the last error. */
static int coroutine_fn connect_fd(const NbdAddress *addr, const SockWait *sw,
                                   GError **errp)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
    int fd = -1, err = 0;

    if (addr->is_unix) {
        struct sockaddr_un un = { .sun_family = AF_UNIX };
        if (strlen(addr->path) >= sizeof(un.sun_path)) {
            error_setg(errp, "UNIX socket path '%s' is too long", addr->path);
            return -1;
        }
        strcpy(un.sun_path, addr->path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        err = fd < 0 ? errno
                     : try_connect(fd, (struct sockaddr *)&un, sizeof(un), sw);
    } else {
        int r = getaddrinfo(addr->host, addr->port, &hints, &res);
        if (r) {
            error_setg(errp, "address resolution failed for %s:%s: %s",
                       addr->host, addr->port, gai_strerror(r));
            return -1;
        }
        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            if (fd >= 0) {
                close(fd);
            }
            fd = socket(ai->ai_family,
                        SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            err = fd < 0 ? errno
                         : try_connect(fd, ai->ai_addr, ai->ai_addrlen, sw);
            if (!err || err == ECANCELED) {
                break;
            }
        }
        freeaddrinfo(res);
    }
    if (err == ECANCELED || err == ETIMEDOUT) {
        set_wait_error(err, errp);
        close(fd);
        return -1;
    }
    if (err) {
        if (addr->is_unix) {
            error_setg(errp, "Failed to connect to '%s': %s", addr->path,
                       g_strerror(err));
        } else {
            error_setg(errp, "Failed to connect to '%s:%s': %s", addr->host,
                       addr->port, g_strerror(err));
        }
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

/*
 * Look at the first len bytes of the greeting without taking them: 1 when
 * they are there, 0 when the server closed before sending them all (with
 * *avail the bytes it did send), -1 with errp set on an error.
 */
static int coroutine_fn peek_greeting(int fd, uint8_t *buf, size_t len,
                                      size_t *avail, const SockWait *sw,
                                      GError **errp)
{
    *avail = 0;
    for (;;) {
        ssize_t n = recv(fd, buf, len, MSG_PEEK);
        if (n >= (ssize_t)len) {
            return 1;
        }
        if (n == 0) {
            return 0;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            error_setg_errno(errp, errno, "Failed to read initial magic");
            return -1;
        }
        if (n > 0) {
            /*
             * Part of it is there: the socket stays readable, so wait a
             * little for the rest rather than spin on it, unless the
             * server has closed its side.
             */
            struct pollfd pfd = { .fd = fd, .events = POLLRDHUP };
            *avail = n;
            if (poll(&pfd, 1, 0) > 0 &&
                (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
                return 0;
            }
            co_sleep_ns(10 * 1000000);
        } else {
            int err = wait_fd(fd, G_IO_IN, sw);
            if (err) {
                set_wait_error(err, errp);
                return -1;
            }
        }
        if (sw->cancel && *sw->cancel) {
            set_wait_error(ECANCELED, errp);
            return -1;
        }
        if (sw->deadline >= 0 && clock_ns() >= sw->deadline) {
            set_wait_error(ETIMEDOUT, errp);
            return -1;
        }
    }
}

/* A greeting cut short: QEMU's words for the field it was reading. */
static void set_eof_error(size_t avail, GError **errp)
{
    const char *field = avail < 8 ? "initial magic"
                      : avail < 16 ? "server magic" : "server flags";
    error_setg(errp, "Failed to read %s: Unexpected end-of-file before all "
               "data were read", field);
}

struct NbdRelay {
    int server_fd, peer_fd;
    GSource *down, *up;
    uint64_t down_bytes;      /* server to libnbd, so far */
    uint8_t byte26;
};

static void relay_stop(NbdRelay *r)
{
    if (r->down) {
        g_source_destroy(r->down);
        g_source_unref(r->down);
        r->down = NULL;
    }
    if (r->up) {
        g_source_destroy(r->up);
        g_source_unref(r->up);
        r->up = NULL;
    }
}

/* The end of either direction ends the handshake for libnbd to report. */
static gboolean relay_fail(NbdRelay *r)
{
    shutdown(r->peer_fd, SHUT_RDWR);
    shutdown(r->server_fd, SHUT_RDWR);
    return G_SOURCE_CONTINUE;   /* sockets shut down stay readable: EOF */
}

static gboolean relay_down_cb(gint fd, GIOCondition cond, gpointer opaque)
{
    NbdRelay *r = opaque;
    uint8_t buf[4096];
    ssize_t n = recv(r->server_fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return G_SOURCE_CONTINUE;
    }
    if (n <= 0) {
        g_source_unref(r->down);
        r->down = NULL;
        shutdown(r->peer_fd, SHUT_WR);
        return G_SOURCE_REMOVE;
    }
    for (ssize_t i = 0; i < n; i++) {
        uint64_t pos = r->down_bytes + i;
        if (pos == 26) {
            r->byte26 = buf[i];
        } else if (pos == 27 && !r->byte26 && !buf[i]) {
            buf[i] = 1;         /* NBD_FLAG_HAS_FLAGS */
        }
    }
    r->down_bytes += n;
    /* Handshake messages are small and the pair's buffer empty. */
    if (send(r->peer_fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
        return relay_fail(r);
    }
    return G_SOURCE_CONTINUE;
}

static gboolean relay_up_cb(gint fd, GIOCondition cond, gpointer opaque)
{
    NbdRelay *r = opaque;
    uint8_t buf[4096];
    ssize_t n = recv(r->peer_fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        return G_SOURCE_CONTINUE;
    }
    if (n <= 0) {
        g_source_unref(r->up);
        r->up = NULL;
        shutdown(r->server_fd, SHUT_WR);
        return G_SOURCE_REMOVE;
    }
    if (send(r->server_fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT) != n) {
        return relay_fail(r);
    }
    return G_SOURCE_CONTINUE;
}

static GSource *relay_watch(int fd, GSourceFunc cb, NbdRelay *r)
{
    GSource *src = g_unix_fd_source_new(fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(src, cb, r, NULL);
    g_source_attach(src, loop_context(loop_get()));
    return src;
}

int coroutine_fn nbd_socket_open(const NbdAddress *addr, int64_t deadline,
                                 NbdWait **slot, const bool *cancel,
                                 NbdRelay **relay, GError **errp)
{
    SockWait sw = { deadline, slot, cancel };
    uint8_t msg[18];
    int pair[2];
    int fd = connect_fd(addr, &sw, errp);

    *relay = NULL;
    if (fd < 0) {
        return -1;
    }
    /*
     * Both greetings start with 16 bytes of magic; a newstyle one has two
     * bytes of flags after them.  Anything else is libnbd's to judge.
     */
    size_t avail;
    int got = peek_greeting(fd, msg, 16, &avail, &sw, errp);
    if (got < 0) {
        goto fail;
    }
    if (!got) {
        set_eof_error(avail, errp);
        goto fail;
    }
    if (memcmp(msg, nbd_magic, 8)) {
        return fd;
    }
    if (memcmp(msg + 8, cliserv_magic, 8)) {
        if (memcmp(msg + 8, opts_magic, 8)) {
            return fd;
        }
        got = peek_greeting(fd, msg, 18, &avail, &sw, errp);
        if (got < 0) {
            goto fail;
        }
        if (!got) {
            set_eof_error(avail, errp);
            goto fail;
        }
        if (msg[17] & 1) {      /* fixed newstyle: libnbd can cope */
            return fd;
        }
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
        error_setg_errno(errp, errno, "socketpair");
        goto fail;
    }
    NbdRelay *r = g_new0(NbdRelay, 1);
    r->server_fd = fd;
    r->peer_fd = pair[1];
    r->down = relay_watch(fd, (GSourceFunc)(void (*)(void))relay_down_cb, r);
    r->up = relay_watch(pair[1], (GSourceFunc)(void (*)(void))relay_up_cb, r);
    *relay = r;
    return pair[0];

fail:
    close(fd);
    return -1;
}

void nbd_relay_free(NbdRelay *r)
{
    relay_stop(r);
    close(r->server_fd);
    close(r->peer_fd);
    g_free(r);
}

bool nbd_relay_switch(NbdRelay *r, int libnbd_fd, GError **errp)
{
    bool ok = true;
    relay_stop(r);
    /* dup2 drops close-on-exec; the server's socket is already non-blocking. */
    if (dup2(r->server_fd, libnbd_fd) < 0) {
        error_setg_errno(errp, errno, "dup2");
        ok = false;
    } else {
        fcntl(libnbd_fd, F_SETFD, FD_CLOEXEC);
    }
    nbd_relay_free(r);
    return ok;
}
