/*
 * Character devices as qemu-storage-daemon has them for its monitors:
 * listening sockets (unix path, TCP host and port, or a descriptor already
 * listening) and stdio, registered by id.  A monitor takes its chardev.
 */
#ifndef STRATA_CHARDEV_H
#define STRATA_CHARDEV_H

#include <stdbool.h>
#include <glib.h>

typedef struct ChardevSocketSpec {
    const char *path;       /* unix socket; or */
    const char *host;       /* TCP host and port; or */
    const char *port;
    int fd;                 /* a listening socket (-1: none) */
    bool wait;              /* server=on,wait=on: wait for the first client */
} ChardevSocketSpec;

/*
 * Create the listening socket with QEMU's messages and register it.  who
 * begins the line that says it waits (wait=on), e.g. "prog: --chardev ARG".
 */
bool chardev_socket_add(const char *id, const ChardevSocketSpec *spec,
                        const char *who, GError **errp);

/* QEMU's stdio chardev (one per process). */
bool chardev_stdio_add(const char *id, GError **errp);

/*
 * Hand id's listening socket to its one user (a monitor).  *first_client:
 * the client wait=on waited for, or -1.  For a stdio chardev *stdio is set
 * and the result is 0.
 */
int chardev_take_listener(const char *id, int *first_client, bool *stdio,
                          GError **errp);

/* Forget every chardev, removing the unix socket files they created. */
void chardev_cleanup(void);

#endif
