/*
 * Sockets for monitors, with QEMU's rules.  Listening: a unix path is
 * unlinked before bind (a second daemon on the same path takes it over, as
 * with QEMU), the socket file is removed on exit, TCP binds the first
 * address the host resolves to.  Client (server=off): connected once, when
 * created, as QEMU does without reconnect; when the peer hangs up the
 * chardev stays, disconnected, and so does the daemon.  With reconnect=N
 * a failed connect or a hang-up arms a timer in the main loop that tries
 * again N seconds later (QEMU's), reporting the first failure of each run.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <glib-unix.h>

#include "strata/chardev.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/socket-listen.h"

/*
 * QEMU listens with a backlog of one since it serves one client at a
 * time; a monitor here serves them all, so many may connect at once.
 */
#define LISTEN_BACKLOG 128

typedef struct {
    char *id;
    int listen_fd;              /* -1: the null backend */
    int first_client;
    char *unix_path;
    bool owns_path;             /* a listener's socket file, removed at exit */
    char *desc;                 /* "unix:PATH,server=on", "tcp:H:P,server=on" */
    /*
     * A client socket: first_client is its connection until a user takes
     * it; desc is the address it connects to ("unix:PATH", "tcp:H:P"),
     * conn_desc what QEMU shows while connected.
     */
    bool client;
    bool unix_flags;
    char *host, *port;
    char *conn_desc;
    bool stdio;                 /* the daemon's stdin/stdout (listen_fd -1) */
    bool taken;
    bool (*connected)(void *);  /* the user's: a client is connected */
    void (*attach)(void *, int);    /* the user's: a new connection */
    void *opaque;
    unsigned reconnect;         /* seconds; 0: no reconnecting */
    GSource *timer;
    bool err_reported;          /* this run of failures has been reported */
    /*
     * A socket nobody uses still takes one client at a time, as QEMU's
     * does without a frontend: held (never read) until it hangs up.
     */
    GSource *accept_src, *hup_src;
} Chardev;

static GList *chardevs;
/*
 * The same ids in a glib hash table fed the same inserts and removes as
 * QEMU's /chardevs container, whose iteration order query-chardev and
 * qom-list follow.
 */
static GHashTable *qom_order;

static void order_add(Chardev *c)
{
    if (!qom_order) {
        qom_order = g_hash_table_new(g_str_hash, g_str_equal);
    }
    g_hash_table_insert(qom_order, c->id, c);
}

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
    return unix_socket_listen(path, 0, LISTEN_BACKLOG, errp);
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

/* QEMU's name for the listening socket (query-chardev, "waiting" line). */
static char *describe(int fd, const ChardevSocketSpec *spec)
{
    if (spec->path) {
        return g_strdup_printf("unix:%s,server=on", spec->path);
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    char host[NI_MAXHOST], port[NI_MAXSERV];
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0 &&
        getnameinfo((struct sockaddr *)&ss, len, host, sizeof(host), port,
                    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
        return g_strdup_printf("tcp:%s:%s,server=on", host, port);
    }
    return g_strdup("socket,server=on");
}

static void watch_listener(Chardev *c);

static void unwatch(Chardev *c)
{
    if (c->accept_src) {
        g_source_destroy(c->accept_src);
        g_source_unref(c->accept_src);
        c->accept_src = NULL;
    }
    if (c->hup_src) {
        g_source_destroy(c->hup_src);
        g_source_unref(c->hup_src);
        c->hup_src = NULL;
    }
}

static void arm_reconnect(Chardev *c);

static gboolean on_client_hup(gint fd, GIOCondition cond, gpointer opaque)
{
    Chardev *c = opaque;

    close(c->first_client);
    c->first_client = -1;
    g_source_unref(c->hup_src);
    c->hup_src = NULL;
    if (!c->client) {
        watch_listener(c);
    } else {
        arm_reconnect(c);
    }
    return G_SOURCE_REMOVE;
}

static void watch_client(Chardev *c)
{
    c->hup_src = g_unix_fd_source_new(c->first_client, G_IO_HUP | G_IO_ERR);
    g_source_set_callback(c->hup_src, (GSourceFunc)(void (*)(void))
                          on_client_hup, c, NULL);
    g_source_attach(c->hup_src, loop_context(loop_get()));
}

static gboolean on_accept(gint fd, GIOCondition cond, gpointer opaque)
{
    Chardev *c = opaque;
    int client = accept4(fd, NULL, NULL, SOCK_CLOEXEC);

    if (client < 0) {
        return G_SOURCE_CONTINUE;
    }
    c->first_client = client;
    g_source_unref(c->accept_src);
    c->accept_src = NULL;
    watch_client(c);
    return G_SOURCE_REMOVE;
}

static void watch_listener(Chardev *c)
{
    c->accept_src = g_unix_fd_source_new(c->listen_fd, G_IO_IN);
    g_source_set_callback(c->accept_src, (GSourceFunc)(void (*)(void))
                          on_accept, c, NULL);
    g_source_attach(c->accept_src, loop_context(loop_get()));
}

static bool unused_connected(const Chardev *c)
{
    return c->hup_src != NULL;
}

/* QEMU's blocking connect, with its messages. */
static int connect_unix(const char *path, GError **errp)
{
    struct sockaddr_un un = { .sun_family = AF_UNIX };

    if (strlen(path) > sizeof(un.sun_path)) {
        error_setg(errp, "UNIX socket path '%s' is too long", path);
        return -1;
    }
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        error_setg_errno(errp, errno, "Failed to create socket");
        return -1;
    }
    /* sun_path need not end in NUL when the path fills it, as in QEMU */
    memcpy(un.sun_path, path, strlen(path));
    int rc;
    do {
        rc = connect(s, (struct sockaddr *)&un, sizeof(un));
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        error_setg_errno(errp, errno, "Failed to connect to '%s'", path);
        close(s);
        return -1;
    }
    return s;
}

static int connect_tcp(const char *host, const char *port, GError **errp)
{
    struct addrinfo hints = {
        .ai_flags = AI_CANONNAME | AI_ADDRCONFIG | AI_V4MAPPED,
        .ai_socktype = SOCK_STREAM,
    };
    struct addrinfo *res;
    int rc = getaddrinfo(host, port, &hints, &res);

    if (rc) {
        error_setg(errp, "address resolution failed for %s:%s: %s", host,
                   port, gai_strerror(rc));
        return -1;
    }
    int s = -1, err = 0;
    /* each address in turn; the last one's error */
    for (struct addrinfo *e = res; e && s < 0; e = e->ai_next) {
        s = socket(e->ai_family, e->ai_socktype | SOCK_CLOEXEC,
                   e->ai_protocol);
        if (s < 0) {
            err = errno;
            continue;
        }
        do {
            rc = connect(s, e->ai_addr, e->ai_addrlen);
        } while (rc < 0 && errno == EINTR);
        if (rc < 0) {
            err = errno;
            close(s);
            s = -1;
        }
    }
    freeaddrinfo(res);
    if (s < 0) {
        error_setg_errno(errp, err, "Failed to connect to '%s:%s'", host,
                         port);
    }
    return s;
}

/* What QEMU's query-chardev shows for a connected client socket. */
static char *describe_connection(int fd)
{
    struct sockaddr_storage ls, ps;
    socklen_t llen = sizeof(ls), plen = sizeof(ps);
    char lh[NI_MAXHOST], lp[NI_MAXSERV], ph[NI_MAXHOST], pp[NI_MAXSERV];

    if (getsockname(fd, (struct sockaddr *)&ls, &llen) < 0) {
        return g_strdup("unknown");
    }
    if (ls.ss_family == AF_UNIX) {
        /* a client's own address is unnamed: QEMU shows "unix:" */
        struct sockaddr_un *un = (struct sockaddr_un *)&ls;
        size_t n = llen > offsetof(struct sockaddr_un, sun_path)
                   ? llen - offsetof(struct sockaddr_un, sun_path) : 0;
        return g_strdup_printf("unix:%.*s", (int)strnlen(un->sun_path, n),
                               un->sun_path);
    }
    if ((ls.ss_family != AF_INET && ls.ss_family != AF_INET6) ||
        getpeername(fd, (struct sockaddr *)&ps, &plen) < 0 ||
        getnameinfo((struct sockaddr *)&ls, llen, lh, sizeof(lh), lp,
                    sizeof(lp), NI_NUMERICHOST | NI_NUMERICSERV) ||
        getnameinfo((struct sockaddr *)&ps, plen, ph, sizeof(ph), pp,
                    sizeof(pp), NI_NUMERICHOST | NI_NUMERICSERV)) {
        return g_strdup("unknown");
    }
    const char *l = ls.ss_family == AF_INET6 ? "[" : "";
    const char *r = ls.ss_family == AF_INET6 ? "]" : "";
    return g_strdup_printf("tcp:%s%s%s:%s <-> %s%s%s:%s", l, lh, r, lp,
                           l, ph, r, pp);
}

static int client_connect(Chardev *c, GError **errp)
{
    return c->unix_path ? connect_unix(c->unix_path, errp)
                        : connect_tcp(c->host, c->port, errp);
}

/* QEMU's line for a failed (re)connect, once per run of failures. */
static void report_connect_error(Chardev *c, GError *err)
{
    if (!c->err_reported) {
        fprintf(stderr, "%s: Unable to connect character device %s: %s\n",
                g_get_prgname(), c->id, err->message);
        c->err_reported = true;
    }
    g_error_free(err);
}

static void connected_to(Chardev *c, int fd)
{
    c->err_reported = false;
    g_free(c->conn_desc);
    c->conn_desc = describe_connection(fd);
    if (c->taken && c->attach) {
        c->attach(c->opaque, fd);
    } else if (c->taken) {
        close(fd);      /* a user that cannot take it (none in the daemon) */
    } else {
        c->first_client = fd;
        watch_client(c);
    }
}

static gboolean on_reconnect_timer(gpointer opaque)
{
    Chardev *c = opaque;
    GError *err = NULL;

    g_source_unref(c->timer);
    c->timer = NULL;
    int fd = client_connect(c, &err);
    if (fd < 0) {
        report_connect_error(c, err);
        arm_reconnect(c);
    } else {
        connected_to(c, fd);
    }
    return G_SOURCE_REMOVE;
}

static void arm_reconnect(Chardev *c)
{
    if (!c->reconnect || c->timer) {
        return;
    }
    c->timer = g_timeout_source_new_seconds(c->reconnect);
    g_source_set_callback(c->timer, on_reconnect_timer, c, NULL);
    g_source_attach(c->timer, loop_context(loop_get()));
}

static bool client_add(const char *id, const ChardevSocketSpec *spec,
                       GError **errp)
{
    int fd;
    GError *err = NULL;

    if (spec->fd >= 0) {
        struct stat st;
        if (fstat(spec->fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
            error_setg(errp, "File descriptor '%d' is not a socket",
                       spec->fd);
            return false;
        }
        fd = spec->fd;
    } else if (spec->path) {
        fd = connect_unix(spec->path, &err);
    } else {
        fd = connect_tcp(spec->host, spec->port, &err);
    }
    if (fd < 0 && !spec->reconnect) {
        g_propagate_error(errp, err);
        return false;
    }
    Chardev *c = g_new0(Chardev, 1);
    c->id = g_strdup(id);
    c->listen_fd = -1;
    c->client = true;
    c->first_client = fd;
    if (spec->fd >= 0) {
        c->desc = g_strdup_printf("fd:%d", spec->fd);
    } else if (spec->path) {
        c->unix_path = g_strdup(spec->path);
        c->unix_flags = spec->unix_flags;
        c->desc = g_strdup_printf("unix:%s", spec->path);
    } else {
        c->host = g_strdup(spec->host);
        c->port = g_strdup(spec->port);
        c->desc = g_strdup_printf("tcp:%s:%s", spec->host, spec->port);
    }
    c->reconnect = spec->reconnect;
    chardevs = g_list_append(chardevs, c);
    order_add(c);
    if (fd < 0) {
        /* QEMU starts all the same and keeps trying */
        report_connect_error(c, err);
        arm_reconnect(c);
    } else {
        c->conn_desc = describe_connection(fd);
        watch_client(c);
    }
    return true;
}

bool chardev_socket_add(const char *id, const ChardevSocketSpec *spec,
                        const char *who, GError **errp)
{
    if (find(id)) {
        /* QEMU's first check to trip over a second chardev of that id */
        error_setg(errp, "duplicate yank instance");
        return false;
    }
    if (spec->client) {
        return client_add(id, spec, errp);
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
    c->owns_path = c->unix_path != NULL;
    c->desc = describe(fd, spec);
    chardevs = g_list_append(chardevs, c);
    order_add(c);

    if (spec->wait) {
        fprintf(stderr, "%s: info: QEMU waiting for connection on: "
                "disconnected:%s\n", who, c->desc);
        do {
            c->first_client = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
        } while (c->first_client < 0 && errno == EINTR);
    }
    if (c->first_client >= 0) {
        watch_client(c);
    } else {
        watch_listener(c);
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
    order_add(c);
    return true;
}

int chardev_take_listener(const char *id, int *first_client,
                          ChardevKind *kind, GError **errp)
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
    unwatch(c);
    c->taken = true;
    *kind = c->stdio ? CHARDEV_KIND_STDIO
          : c->client ? CHARDEV_KIND_CLIENT : CHARDEV_KIND_LISTENER;
    *first_client = c->first_client;
    c->first_client = -1;
    return c->stdio || c->client ? 0 : c->listen_fd;
}

static void chardev_free(Chardev *c)
{
    unwatch(c);
    if (c->timer) {
        g_source_destroy(c->timer);
        g_source_unref(c->timer);
    }
    if (!c->taken && c->listen_fd >= 0) {
        close(c->listen_fd);
    }
    if (c->first_client >= 0) {
        close(c->first_client);
    }
    if (c->owns_path) {
        unlink(c->unix_path);
    }
    g_free(c->unix_path);
    g_free(c->host);
    g_free(c->port);
    g_free(c->conn_desc);
    g_free(c->desc);
    g_free(c->id);
    g_free(c);
}

void chardev_cleanup(void)
{
    while (chardevs) {
        chardev_free(chardevs->data);
        chardevs = g_list_delete_link(chardevs, chardevs);
    }
    if (qom_order) {
        g_hash_table_destroy(qom_order);
        qom_order = NULL;
    }
}

bool chardev_exists(const char *id)
{
    return find(id) != NULL;
}

bool chardev_null_add(const char *id, GError **errp)
{
    if (find(id)) {
        error_setg(errp, "duplicate yank instance");
        return false;
    }
    Chardev *c = g_new0(Chardev, 1);
    c->id = g_strdup(id);
    c->listen_fd = -1;
    c->first_client = -1;
    chardevs = g_list_append(chardevs, c);
    order_add(c);
    return true;
}

void chardev_set_user(const char *id, bool (*connected)(void *),
                      void *opaque)
{
    Chardev *c = find(id);

    if (c) {
        c->connected = connected;
        c->opaque = opaque;
    }
}

void chardev_set_attach(const char *id, void (*attach)(void *, int))
{
    Chardev *c = find(id);

    if (c) {
        c->attach = attach;
    }
}

void *chardev_handle(const char *id)
{
    return find(id);
}

void chardev_peer_closed(void *handle)
{
    if (g_list_find(chardevs, handle)) {
        arm_reconnect(handle);
    }
}

bool chardev_remove(const char *id, GError **errp)
{
    Chardev *c = find(id);

    if (!c) {
        error_setg(errp, "Chardev '%s' not found", id);
        return false;
    }
    if (c->taken) {
        error_setg(errp, "Chardev '%s' is busy", id);
        return false;
    }
    chardevs = g_list_remove(chardevs, c);
    g_hash_table_remove(qom_order, c->id);
    chardev_free(c);
    return true;
}

GPtrArray *chardev_list(void)
{
    GPtrArray *a = g_ptr_array_new_with_free_func(
        (GDestroyNotify)chardev_status_free);
    GHashTableIter it;
    gpointer k, v;

    if (!qom_order) {
        return a;
    }
    g_hash_table_iter_init(&it, qom_order);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        Chardev *c = v;
        ChardevStatus *st = g_new0(ChardevStatus, 1);
        st->id = g_strdup(c->id);
        st->is_socket = c->listen_fd >= 0 || c->client;
        st->client = c->client;
        st->unix_flags = c->unix_flags;
        st->frontend_open = c->taken;
        st->connected = c->connected ? c->connected(c->opaque)
                                     : unused_connected(c);
        st->unix_path = g_strdup(c->unix_path);
        if (c->client) {
            st->host = g_strdup(c->host);
            st->port = g_strdup(c->port);
        } else if (st->is_socket && g_str_has_prefix(c->desc, "tcp:")) {
            /* "tcp:HOST:PORT,server=on", HOST perhaps an IPv6 address */
            const char *h = c->desc + 4, *end = strrchr(h, ',');
            const char *colon = g_strrstr_len(h, end - h, ":");
            st->host = g_strndup(h, colon - h);
            st->port = g_strndup(colon + 1, end - colon - 1);
        }
        if (c->stdio) {
            st->filename = g_strdup("stdio");
        } else if (!st->is_socket) {
            st->filename = g_strdup("null");
        } else if (c->client && st->connected) {
            st->filename = g_strdup(c->conn_desc);
        } else {
            st->filename = g_strdup_printf("%s%s", st->connected ? "" :
                                           "disconnected:", c->desc);
        }
        g_ptr_array_add(a, st);
    }
    return a;
}

void chardev_status_free(ChardevStatus *st)
{
    g_free(st->id);
    g_free(st->filename);
    g_free(st->unix_path);
    g_free(st->host);
    g_free(st->port);
    g_free(st);
}
