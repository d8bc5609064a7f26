/*
 * Listening Unix sockets that appear at their path only once they listen.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "strata/error.h"
#include "strata/socket-listen.h"

int unix_socket_listen(const char *path, int sock_flags, int backlog,
                       GError **errp)
{
    struct sockaddr_un un = { .sun_family = AF_UNIX };
    size_t len = strlen(path);

    if (len > sizeof(un.sun_path)) {
        error_setg(errp, "UNIX socket path '%s' is too long", path);
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | sock_flags, 0);
    if (fd < 0) {
        error_setg_errno(errp, errno, "Failed to create Unix socket");
        return -1;
    }
    /* QEMU replaces a stale socket file (and any other file) at the path. */
    if (unlink(path) < 0 && errno != ENOENT) {
        error_setg_errno(errp, errno, "Failed to unlink socket %s", path);
        close(fd);
        return -1;
    }
    /*
     * A temporary name too long for sun_path falls back to binding the path
     * itself (the window before listen() then stays, as in QEMU).
     */
    g_autofree char *tmp = g_strdup_printf("%s.%d.tmp", path, (int)getpid());
    const char *bind_path = strlen(tmp) < sizeof(un.sun_path) ? tmp : path;
    if (bind_path != path) {
        unlink(tmp);
    }
    memcpy(un.sun_path, bind_path, strlen(bind_path));
    if (bind(fd, (struct sockaddr *)&un, sizeof(un)) < 0) {
        error_setg_errno(errp, errno, "Failed to bind socket to %s", path);
        close(fd);
        return -1;
    }
    if (listen(fd, backlog) < 0) {
        error_setg_errno(errp, errno, "Failed to listen on socket");
        unlink(bind_path);
        close(fd);
        return -1;
    }
    if (bind_path != path && rename(bind_path, path) < 0) {
        error_setg_errno(errp, errno, "Failed to bind socket to %s", path);
        unlink(bind_path);
        close(fd);
        return -1;
    }
    return fd;
}
