#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "conn.h"
#include "parse.h"
#include "pyliteral.h"

QmpAddressKind qmp_parse_address(const char *address, char **host, int *port)
{
    g_auto(GStrv) parts = g_strsplit(address, ":", -1);
    gint64 n;
    bool overflow;

    if (g_strv_length(parts) != 2) {
        return QMP_ADDRESS_UNIX;
    }
    /* Python's int(): surrounding blanks are allowed */
    g_autofree char *p = g_strstrip(g_strdup(parts[1]));
    if (!py_int_parse(p, strlen(p), &n, &overflow) || overflow ||
        n < 0 || n > 65535) {
        return QMP_ADDRESS_BAD_PORT;
    }
    *host = g_strdup(parts[0]);
    *port = n;
    return QMP_ADDRESS_INET;
}

static void set_errno_error(GError **errp, int err)
{
    g_set_error(errp, SHELL_ERROR, 0,
                "Failed to establish connection: [Errno %d] %s", err,
                g_strerror(err));
}

static int connect_unix(const char *path, GError **errp)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        set_errno_error(errp, ENAMETOOLONG);
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        set_errno_error(errp, errno);
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    return fd;
}

static int connect_inet(const char *host, int port, GError **errp)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
    struct addrinfo *res, *ai;
    char service[16];
    int fd = -1, err = ECONNREFUSED;

    snprintf(service, sizeof(service), "%d", port);
    int rc = getaddrinfo(*host ? host : NULL, service, &hints, &res);
    if (rc) {
        g_set_error(errp, SHELL_ERROR, 0,
                    "Failed to establish connection: %s", gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
            break;
        }
        err = errno;
        if (fd >= 0) {
            close(fd);
        }
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        set_errno_error(errp, err);
    }
    return fd;
}

/* A whole message at the front of the buffer, or NULL.  Garbage between
 * messages (there is none from a QMP server) would be skipped. */
static json_t *take_message(QmpConn *c)
{
    while (c->scanned < c->in->len) {
        char ch = c->in->data[c->scanned++];
        if (c->in_string) {
            if (c->escaped) {
                c->escaped = false;
            } else if (ch == '\\') {
                c->escaped = true;
            } else if (ch == '"') {
                c->in_string = false;
            }
            continue;
        }
        if (ch == '"') {
            c->in_string = true;
        } else if (ch == '{' || ch == '[') {
            c->depth++;
        } else if ((ch == '}' || ch == ']') && c->depth > 0 &&
                   --c->depth == 0) {
            json_t *msg = json_loadb((const char *)c->in->data, c->scanned,
                                     JSON_DISABLE_EOF_CHECK | JSON_ALLOW_NUL,
                                     NULL);
            g_byte_array_remove_range(c->in, 0, c->scanned);
            c->scanned = 0;
            if (msg) {
                return msg;
            }
        } else if (c->depth == 0) {
            /* blanks ("\r\n") between messages */
            g_byte_array_remove_range(c->in, 0, c->scanned);
            c->scanned = 0;
        }
    }
    return NULL;
}

/* Read once (blocking); false at the end of the connection. */
static bool fill(QmpConn *c)
{
    guint8 chunk[65536];
    ssize_t n;

    do {
        n = read(c->fd, chunk, sizeof(chunk));
    } while (n < 0 && errno == EINTR);
    if (n <= 0) {
        return false;
    }
    g_byte_array_append(c->in, chunk, n);
    return true;
}

static bool is_event(json_t *msg)
{
    return json_object_get(msg, "event") != NULL;
}

/* The next message that is not an event; events go to on_event. */
static json_t *next_reply(QmpConn *c, GError **errp)
{
    for (;;) {
        json_t *msg;
        while ((msg = take_message(c))) {
            if (is_event(msg)) {
                if (c->on_event) {
                    c->on_event(msg, c->opaque);
                }
                json_decref(msg);
                continue;
            }
            return msg;
        }
        if (!fill(c)) {
            g_set_error_literal(errp, SHELL_ERROR, 0, "Disconnected");
            return NULL;
        }
    }
}

static bool send_msg(QmpConn *c, json_t *cmd, GError **errp)
{
    g_autofree char *text = json_dumps(cmd, JSON_COMPACT);
    size_t len = strlen(text), done = 0;

    while (done < len) {
        ssize_t n = send(c->fd, text + done, len - done, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            g_set_error_literal(errp, SHELL_ERROR, 0, "Disconnected");
            return false;
        }
        done += n;
    }
    return true;
}

json_t *qmp_conn_execute(QmpConn *c, json_t *cmd, GError **errp)
{
    if (!send_msg(c, cmd, errp)) {
        return NULL;
    }
    for (;;) {
        json_t *msg = next_reply(c, errp);
        if (!msg || !json_object_get(msg, "QMP")) {
            return msg;
        }
        json_decref(msg);       /* a greeting we did not wait for (-N) */
    }
}

json_t *qmp_conn_query(QmpConn *c, const char *command)
{
    json_t *cmd = json_pack("{s:s}", "execute", command);
    json_t *reply = qmp_conn_execute(c, cmd, NULL);
    json_t *ret = json_incref(json_object_get(reply, "return"));
    json_decref(cmd);
    json_decref(reply);
    return ret;
}

void qmp_conn_dispatch(QmpConn *c)
{
    json_t *msg;
    while ((msg = take_message(c))) {
        if (!json_object_get(msg, "QMP") && c->on_event) {
            c->on_event(msg, c->opaque);
        }
        json_decref(msg);
    }
}

bool qmp_conn_pump(QmpConn *c)
{
    if (!fill(c)) {
        return false;
    }
    qmp_conn_dispatch(c);
    return true;
}

QmpConn *qmp_conn_open(const char *address, bool negotiate,
                       QmpEventFunc *on_event, void *opaque, GError **errp)
{
    g_autofree char *host = NULL;
    int port = 0, fd;

    if (qmp_parse_address(address, &host, &port) == QMP_ADDRESS_INET) {
        fd = connect_inet(host, port, errp);
    } else {
        fd = connect_unix(address, errp);
    }
    if (fd < 0) {
        return NULL;
    }
    QmpConn *c = g_new0(QmpConn, 1);
    c->fd = fd;
    c->in = g_byte_array_new();
    c->on_event = on_event;
    c->opaque = opaque;
    if (!negotiate) {
        return c;
    }
    c->greeting = next_reply(c, errp);
    if (!c->greeting || !json_object_get(c->greeting, "QMP")) {
        if (c->greeting) {
            g_set_error_literal(errp, SHELL_ERROR, 0,
                                "Expected a QMP greeting");
        }
        qmp_conn_close(c);
        return NULL;
    }
    json_t *cmd = json_pack("{s:s}", "execute", "qmp_capabilities");
    json_t *reply = qmp_conn_execute(c, cmd, errp);
    json_decref(cmd);
    if (!reply || !json_object_get(reply, "return")) {
        if (reply) {
            json_t *e = json_object_get(reply, "error");
            g_set_error(errp, SHELL_ERROR, 0, "Negotiation failed: %s",
                        json_string_value(json_object_get(e, "desc")));
        }
        json_decref(reply);
        qmp_conn_close(c);
        return NULL;
    }
    json_decref(reply);
    return c;
}

void qmp_conn_close(QmpConn *c)
{
    if (c) {
        close(c->fd);
        g_byte_array_free(c->in, TRUE);
        json_decref(c->greeting);
        g_free(c);
    }
}
