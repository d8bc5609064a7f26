/*
 * Listening Unix sockets for the QMP monitors and the NBD server.
 */
#ifndef STRATA_SOCKET_LISTEN_H
#define STRATA_SOCKET_LISTEN_H

#include <glib.h>

/*
 * A socket listening at path, with QEMU's behaviour and messages: any file
 * already at path is replaced (a second daemon on the same path takes it
 * over).  The socket is bound and listening under a temporary name and then
 * renamed to path, so whoever sees the file can connect: scripts wait for
 * a daemon by waiting for its socket file, and between bind() and listen()
 * they would be refused.  sock_flags adds SOCK_NONBLOCK if wanted
 * (SOCK_CLOEXEC is always set).  Returns the descriptor, or -1 and errp.
 */
int unix_socket_listen(const char *path, int sock_flags, int backlog,
                       GError **errp);

#endif
