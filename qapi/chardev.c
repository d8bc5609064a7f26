/*
 * Listening sockets for monitors, with QEMU's rules: a unix path is
 * unlinked before bind (a second daemon on the same path takes it over, as
 * with QEMU), the socket file is removed on exit, TCP binds the first
 * address the host resolves to.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "strata/chardev.h"
#include "strata/error.h"

/*
 * QEMU listens with a backlog of one since it serves one client at a
 * time; a monitor here serves them all, so many may connect at once.
 */
#define LISTEN_BACKLOG 128

typedef struct {
    char *id;
    int listen_fd;
    int first_client;
    char *unix_path;
    bool stdio;
    bool taken;
} Chardev;

static GList *chardevs;

static Chardev *find(const char *id)
{
    for (GList *l = chardevs; l; l = l->next) {
        Chardev *c = l->data;
        if (!strcmp(c->id, id)) {
            return c;
        }
    }
    return NULL;
}

static int listen_unix(const char *path, GError **errp)
{
    struct sockaddr_un un = { .sun_family = AF_UNIX };

    if (strlen(path) > sizeof(un.sun_path)) {
        error_setg(errp, "UNIX socket path '%s' is too long", path);
        return -1;
    }
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) {
        error_setg_errno(errp, errno, "Failed to create Unix socket");
        return -1;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        error_setg_errno(errp, errno, "Failed to unlink socket %s", path);
        goto fail;
    }
    memcpy(un.sun_path, path, strlen(path));
    if (bind(sock, (struct sockaddr *)&un, sizeof(un)) < 0) {
        error_setg_errno(errp, errno, "Failed to bind socket to %s", path);
        goto fail;
    }
    if (listen(sock, LISTEN_BACKLOG) < 0) {
        error_setg_errno(errp, errno, "Failed to listen on socket");
        goto fail;
    }
    return sock;
fail:
    close(sock);
    return -1;
}

static int listen_tcp(const char *host, const char *port, GError **errp)
{
    struct addrinfo hints = {
        .ai_flags = AI_PASSIVE, .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
    };
    struct addrinfo *res;

    if (!host) {
        error_setg(errp, "host not specified");
        return -1;
    }
    int rc = getaddrinfo(*host ? host : NULL, port && *port ? port : NULL,
                         &hints, &res);
    if (rc) {
        error_setg(errp, "address resolution failed for %s:%s: %s", host,
                   port ? port : "", gai_strerror(rc));
        return -1;
    }
    int err = 0;
    bool created = false;
    for (struct addrinfo *e = res; e; e = e->ai_next) {
        int s = socket(e->ai_family, e->ai_socktype | SOCK_CLOEXEC, 0);
        if (s < 0) {
            err = errno;
            continue;
        }
        created = true;
        int on = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
        if (e->ai_family == AF_INET6) {
            setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
        }
        if (bind(s, e->ai_addr, e->ai_addrlen) < 0) {
            err = errno;
            close(s);
            if (err != EADDRINUSE) {
                freeaddrinfo(res);
                error_setg_errno(errp, err, "Failed to bind socket");
                return -1;
            }
            continue;
        }
        if (listen(s, LISTEN_BACKLOG) < 0) {
            err = errno;
            close(s);
            continue;
        }
        freeaddrinfo(res);
        return s;
    }
    freeaddrinfo(res);
    error_setg_errno(errp, err, created ? "Failed to find an available port"
                                        : "Failed to create a socket");
    return -1;
}

/* QEMU's description of the socket in its "waiting" message. */
static char *describe(int fd, const ChardevSocketSpec *spec)
{
    if (spec->path) {
        return g_strdup_printf("disconnected:unix:%s,server=on", spec->path);
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
        getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port,
                    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
        return g_strdup_printf("disconnected:tcp:%s:%s,server=on", host, port);
    }
    return g_strdup("disconnected:socket,server=on");
}

bool chardev_socket_add(const char *id, const ChardevSocketSpec *spec,
                        const char *who, GError **errp)
{
    if (find(id)) {
        /* QEMU's first check to trip over a second chardev of that id */
        error_setg(errp, "duplicate yank instance");
        return false;
    }
    int fd;
    if (spec->fd >= 0) {
        fd = spec->fd;
    } else if (spec->path) {
        fd = listen_unix(spec->path, errp);
    } else {
        fd = listen_tcp(spec->host, spec->port, errp);
    }
    if (fd < 0) {
        return false;
    }
    Chardev *c = g_new0(Chardev, 1);
    c->id = g_strdup(id);
    c->listen_fd = fd;
    c->first_client = -1;
    c->unix_path = spec->path && spec->fd < 0 ? g_strdup(spec->path) : NULL;
    chardevs = g_list_append(chardevs, c);

    if (spec->wait) {
        char *d = describe(fd, spec);
        fprintf(stderr, "%s: info: QEMU waiting for connection on: %s\n",
                who, d);
        g_free(d);
        do {
            c->first_client = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        } while (c->first_client < 0 && errno == EINTR);
    }
    return true;
}

bool chardev_stdio_add(const char *id, GError **errp)
{
    if (find(id)) {
        error_setg(errp, "duplicate yank instance");
        return false;
    }
    for (GList *l = chardevs; l; l = l->next) {
        if (((Chardev *)l->data)->stdio) {
            error_setg(errp, "cannot use stdio by multiple character "
                       "devices");
            return false;
        }
    }
    Chardev *c = g_new0(Chardev, 1);
    c->id = g_strdup(id);
    c->listen_fd = -1;
    c->first_client = -1;
    c->stdio = true;
    chardevs = g_list_append(chardevs, c);
    return true;
}

int chardev_take_listener(const char *id, int *first_client, bool *stdio,
                          GError **errp)
{
    Chardev *c = find(id);

    if (!c) {
        error_setg(errp, "chardev \"%s\" not found", id);
        return -1;
    }
    if (c->taken) {
        error_setg(errp, "Device '%s' is in use", id);
        return -1;
    }
    c->taken = true;
    *stdio = c->stdio;
    *first_client = c->first_client;
    c->first_client = -1;
    return c->stdio ? 0 : c->listen_fd;
}

void chardev_cleanup(void)
{
    while (chardevs) {
        Chardev *c = chardevs->data;
        if (!c->taken && c->listen_fd >= 0) {
            close(c->listen_fd);
        }
        if (c->first_client >= 0) {
            close(c->first_client);
        }
        if (c->unix_path) {
            unlink(c->unix_path);
        }
        g_free(c->unix_path);
        g_free(c->id);
        g_free(c);
        chardevs = g_list_delete_link(chardevs, chardevs);
    }
}
