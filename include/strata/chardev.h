/*
 * Character devices as qemu-storage-daemon has them for its monitors:
 * listening sockets (unix path, TCP host and port, or a descriptor already
 * listening), client sockets that connect to a listening peer (server=off),
 * and stdio, registered by id.  A monitor takes its chardev.
 */
#ifndef STRATA_CHARDEV_H
#define STRATA_CHARDEV_H

#include <stdbool.h>
#include <glib.h>

typedef struct ChardevSocketSpec {
    const char *path;       /* unix socket; or */
    const char *host;       /* TCP host and port; or */
    const char *port;
    int fd;                 /* a listening (client: connected) socket, or -1 */
    bool wait;              /* server=on,wait=on: wait for the first client */
    bool client;            /* server=off: connect to path or host:port */
    /*
     * A client's unix address came from the command line, whose reader
     * sets QEMU's abstract=off and tight=on (qom-get addr shows them).
     */
    bool unix_flags;
    /*
     * A client's reconnect=N: when a connect fails or the peer hangs up,
     * try again every N seconds (0: connect once, at creation).
     */
    unsigned reconnect;
} ChardevSocketSpec;

typedef enum {
    CHARDEV_KIND_LISTENER,  /* a listening socket */
    CHARDEV_KIND_CLIENT,    /* a socket connected to its peer */
    CHARDEV_KIND_STDIO,
} ChardevKind;

/*
 * Create the listening socket, or connect the client socket, with QEMU's
 * messages and register it.  who begins the line that says it waits
 * (wait=on), e.g. "prog: --chardev ARG".
 */
bool chardev_socket_add(const char *id, const ChardevSocketSpec *spec,
                        const char *who, GError **errp);

/* QEMU's stdio chardev (one per process). */
bool chardev_stdio_add(const char *id, GError **errp);

/*
 * Hand id's socket to its one user (a monitor).  A listener: the result is
 * the listening socket, *first_client the client wait=on waited for, or
 * -1.  A client socket: the result is 0 and *first_client the connected
 * socket (the user owns it and closes it when the peer has gone; the
 * chardev then shows as disconnected, as QEMU's does, and is not connected
 * again).  stdio: the result is 0.
 */
int chardev_take_listener(const char *id, int *first_client,
                          ChardevKind *kind, GError **errp);

/* Forget every chardev, removing the unix socket files they created. */
void chardev_cleanup(void);

bool chardev_exists(const char *id);
/* The null backend (chardev-add type null): it has no socket. */
bool chardev_null_add(const char *id, GError **errp);
/*
 * The user that took id's socket tells whether a client is connected
 * (query-chardev's "disconnected:" prefix, qom's "connected").
 */
void chardev_set_user(const char *id, bool (*connected)(void *),
                      void *opaque);
/*
 * A client chardev's user: attach(opaque, fd) gets each connection made
 * after chardev_take_listener; the user calls chardev_peer_closed(handle)
 * when its session over that connection ends.  handle is what
 * chardev_handle returns; a stale one (the chardev gone) is ignored.
 */
void chardev_set_attach(const char *id, void (*attach)(void *, int));
void *chardev_handle(const char *id);
void chardev_peer_closed(void *handle);
/* Remove an unused chardev (QEMU's "not found" and "is busy" errors). */
bool chardev_remove(const char *id, GError **errp);

typedef struct ChardevStatus {
    char *id;
    char *filename;           /* as QEMU's query-chardev shows it */
    char *unix_path;          /* a unix socket's path, else NULL */
    char *host, *port;        /* a TCP socket's address, numeric */
    bool is_socket;           /* else the null backend */
    bool client;              /* a client socket (server=off) */
    bool unix_flags;          /* its address has abstract and tight */
    bool frontend_open;       /* a monitor uses it */
    bool connected;
} ChardevStatus;
void chardev_status_free(ChardevStatus *st);
/* Every chardev, in the order of QEMU's /chardevs container. */
GPtrArray *chardev_list(void);

#endif
