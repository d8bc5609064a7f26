/*
 * The NBD client driver's parts: filename parsing (nbd-uri.c), one libnbd
 * connection driven by the thread's loop (nbd-conn.c), and the driver with
 * its reconnection logic (nbd.c).
 */
#ifndef STRATA_NBD_INT_H
#define STRATA_NBD_INT_H

#include "nbd-lib.h"
#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/loop.h"

typedef struct NbdAddress {
    bool is_unix;
    char *path;              /* unix */
    char *host, *port;       /* inet */
} NbdAddress;

/* "nbd://..." / "nbd+unix://..." / "nbd:..." into options (QEMU's rules). */
bool nbd_parse_filename(const char *filename, json_t *options, GError **errp);
/* QEMU's pseudo-filename for an address and export (g_free). */
char *nbd_make_filename(const NbdAddress *addr, const char *export);

/*
 * A coroutine parked until something happens or a time passes.  Whoever
 * wakes it first (nbd_wait_wake, the timer) wins; the other does nothing.
 */
typedef struct NbdWait {
    Coroutine *co;
    bool pending;
    bool timed_out;
    GSource *timer;
} NbdWait;

/* Yield until nbd_wait_wake(w) or timeout_ns (< 0: no timeout). */
void coroutine_fn nbd_wait(NbdWait *w, int64_t timeout_ns);
void nbd_wait_wake(NbdWait *w);

/*
 * One libnbd handle.  Its socket is watched in the thread's GMainContext
 * for the direction libnbd asks for; completion callbacks therefore run
 * from the loop, never inside a request's coroutine.
 */
typedef struct NbdConn {
    struct nbd_handle *h;
    GSource *src;
    gpointer tag;            /* the socket in src, NULL if none */
    int fd;
    NbdWait *waiter;         /* a connecting coroutine, woken on progress */
    /* Called from the loop when the connection dies (may free nothing). */
    void (*on_dead)(void *opaque);
    void *opaque;
    /* What libnbd said when the state machine failed, and its errno. */
    char *err;
    int err_errno;
    bool connected;          /* reached the transmission phase once */
} NbdConn;

typedef struct NbdConnectParams {
    const NbdAddress *addr;
    const char *export;
    const char *meta_context;   /* "base:allocation" or a bitmap context */
    bool *cancel;               /* checked after each wake-up */
} NbdConnectParams;

/*
 * Connect and negotiate until the handle is ready.  deadline_ns is a
 * clock_ns() time (< 0: none).  On failure the handle is closed and errp
 * says why in QEMU's words.
 */
int coroutine_fn nbd_conn_connect(NbdConn *c, const NbdConnectParams *p,
                                  int64_t deadline_ns, GError **errp);
/* After submitting a command: watch for what libnbd wants now. */
void nbd_conn_kick(NbdConn *c);
bool nbd_conn_alive(NbdConn *c);
/* Send NBD_CMD_DISC if possible (graceful) and free the handle. */
void nbd_conn_close(NbdConn *c, bool graceful);

/*
 * Connect to the server (nbd-socket.c).  Returns the socket to give libnbd
 * (nbd_aio_connect_socket), or -1 with errp set.  While it waits, *slot
 * points at the wait (to be woken once *cancel is set).  For servers libnbd cannot
 * negotiate with alone, *relay is set (else NULL): once libnbd is ready,
 * nbd_relay_switch() puts the server's socket in place of libnbd's; if
 * the handshake fails, nbd_relay_free().
 */
typedef struct NbdRelay NbdRelay;
int coroutine_fn nbd_socket_open(const NbdAddress *addr, int64_t deadline,
                                 NbdWait **slot, const bool *cancel,
                                 NbdRelay **relay, GError **errp);
bool nbd_relay_switch(NbdRelay *r, int libnbd_fd, GError **errp);
void nbd_relay_free(NbdRelay *r);

#endif
