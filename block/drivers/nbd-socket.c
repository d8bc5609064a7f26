/*
 * The socket libnbd talks through, connected by us.
 *
 * libnbd could connect by itself, but it refuses one kind of server QEMU
 * accepts: an old-style ("classic") server too old to know about flags,
 * whose one greeting (magic, size, flags, padding: 152 bytes) has 0 where
 * the flags go ("invalid eflags == 0 from server").  Such servers often
 * serve one client at a time, so a second attempt is no answer.  We connect,
 * peek at the greeting, and hand newstyle servers' sockets to libnbd as they
 * are.  For an old-style server we read the greeting, set the one flag that
 * says "no optional features" (HAS_FLAGS: no flush, no FUA, as QEMU then
 * assumes), and let libnbd read the corrected greeting from one end of a
 * socket pair.  Once libnbd is ready, dup2() puts the server's socket in
 * place of that end: from then on libnbd talks to the server on the same
 * descriptor number with nothing in between.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <glib-unix.h>
#include "nbd-int.h"

#define OLDSTYLE_LEN 152
static const uint8_t nbd_magic[8] = { 'N', 'B', 'D', 'M', 'A', 'G', 'I', 'C' };
static const uint8_t cliserv_magic[8] = { 0x00, 0x00, 0x42, 0x02,
                                          0x81, 0x86, 0x12, 0x53 };

static gboolean fd_ready_cb(gint fd, GIOCondition cond, gpointer opaque)
{
    nbd_wait_wake(opaque);
    return G_SOURCE_REMOVE;
}

/* Wait until fd is ready for cond; false when the deadline passed first. */
static bool coroutine_fn wait_fd(int fd, GIOCondition cond, int64_t deadline)
{
    NbdWait w;
    GSource *src = g_unix_fd_source_new(fd, cond | G_IO_HUP | G_IO_ERR);
    g_source_set_callback(src, (GSourceFunc)(void (*)(void))fd_ready_cb, &w,
                          NULL);
    g_source_attach(src, loop_context(loop_get()));
    nbd_wait(&w, deadline < 0 ? -1 : MAX(deadline - clock_ns(), 0));
    g_source_destroy(src);
    g_source_unref(src);
    return !w.timed_out;
}

/* One non-blocking connect; 0 or an errno. */
static int coroutine_fn try_connect(int fd, const struct sockaddr *sa,
                                    socklen_t salen, int64_t deadline)
{
    if (connect(fd, sa, salen) == 0) {
        return 0;
    }
    int err = errno;
    if (err == EINPROGRESS) {
        socklen_t len = sizeof(err);
        err = wait_fd(fd, G_IO_OUT, deadline) ? 0 : ETIMEDOUT;
        if (!err && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
            err = errno;
        }
    }
    return err;
}

/* Connect to the server as QEMU does: each address in turn; the last error. */
static int coroutine_fn connect_fd(const NbdAddress *addr, int64_t deadline,
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
                     : try_connect(fd, (struct sockaddr *)&un, sizeof(un),
                                   deadline);
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
                         : try_connect(fd, ai->ai_addr, ai->ai_addrlen,
                                       deadline);
            if (!err) {
                break;
            }
        }
        freeaddrinfo(res);
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

/* Read (or with MSG_PEEK, look at) exactly len bytes of the greeting. */
static bool coroutine_fn recv_greeting(int fd, uint8_t *buf, size_t len,
                                       int flags, int64_t deadline,
                                       GError **errp)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = recv(fd, buf + (flags ? 0 : got), flags ? len : len - got,
                         flags);
        if (n > 0) {
            got = flags ? (size_t)n : got + n;
            if (got >= len) {
                break;
            }
            if (!flags) {
                continue;
            }
            /*
             * Part of it is there: the socket stays readable, so wait a
             * little for the rest rather than spin on it.
             */
            co_sleep_ns(10 * 1000000);
            if (deadline >= 0 && clock_ns() >= deadline) {
                error_setg(errp, "Connection attempt cancelled by timeout");
                return false;
            }
            continue;
        } else if (n == 0) {
            error_setg(errp, "Failed to read initial magic: Unexpected "
                       "end-of-file before all data were read");
            return false;
        } else if (errno != EAGAIN && errno != EINTR) {
            error_setg_errno(errp, errno, "Failed to read initial magic");
            return false;
        }
        if (!wait_fd(fd, G_IO_IN, deadline)) {
            error_setg(errp, "Connection attempt cancelled by timeout");
            return false;
        }
    }
    return true;
}

int coroutine_fn nbd_socket_open(const NbdAddress *addr, int64_t deadline,
                                 int *server_fd, int *peer_fd, GError **errp)
{
    uint8_t msg[OLDSTYLE_LEN];
    int pair[2];
    int fd = connect_fd(addr, deadline, errp);

    *server_fd = *peer_fd = -1;
    if (fd < 0) {
        return -1;
    }
    /*
     * A newstyle server's greeting is 18 bytes: waiting for 16 is safe, and
     * tells the two apart.  Anything else is libnbd's to judge.
     */
    if (!recv_greeting(fd, msg, 16, MSG_PEEK, deadline, errp)) {
        goto fail;
    }
    if (memcmp(msg, nbd_magic, 8) || memcmp(msg + 8, cliserv_magic, 8)) {
        return fd;
    }
    if (!recv_greeting(fd, msg, sizeof(msg), 0, deadline, errp)) {
        goto fail;
    }
    /* Bytes 26-27: the transmission flags; bit 0 is HAS_FLAGS. */
    if (!msg[26] && !msg[27]) {
        msg[27] = 1;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
        error_setg_errno(errp, errno, "socketpair");
        goto fail;
    }
    /* 152 bytes always fit in an empty socket buffer. */
    if (write(pair[1], msg, sizeof(msg)) != (ssize_t)sizeof(msg)) {
        error_setg_errno(errp, errno, "socketpair");
        close(pair[0]);
        close(pair[1]);
        goto fail;
    }
    /*
     * The writing end stays open until the switch: closed, it would make
     * libnbd's end readable (end of file) and the connection die before
     * the server's socket is put in its place.
     */
    *peer_fd = pair[1];
    *server_fd = fd;
    return pair[0];

fail:
    close(fd);
    return -1;
}

bool nbd_socket_switch(int libnbd_fd, int server_fd, int peer_fd,
                       GError **errp)
{
    close(peer_fd);
    /* dup2 drops close-on-exec; the server's socket is already non-blocking. */
    if (dup2(server_fd, libnbd_fd) < 0) {
        error_setg_errno(errp, errno, "dup2");
        close(server_fd);
        return false;
    }
    fcntl(libnbd_fd, F_SETFD, FD_CLOEXEC);
    close(server_fd);
    return true;
}
