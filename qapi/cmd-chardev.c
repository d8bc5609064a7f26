/*
 * chardev-add, chardev-remove, query-chardev, query-chardev-backends over
 * the daemon's chardevs (qapi/chardev.c): listening sockets, as --chardev
 * makes them, client sockets (server: false) and the null backend.  A
 * chardev a monitor uses is busy.  Errors are QEMU 7.2's; what strata lacks
 * (TLS, telnet, websockets, logfiles) is refused by name.
 */
#include <limits.h>
#include <string.h>

#include "strata/chardev.h"
#include "strata/error.h"
#include "qapi-commands.h"

ChardevInfoList *qmp_query_chardev(GError **errp)
{
    GPtrArray *all = chardev_list();
    ChardevInfoList *head = NULL;

    /* QEMU prepends while walking its container */
    for (guint i = 0; i < all->len; i++) {
        ChardevStatus *st = all->pdata[i];
        ChardevInfo *info = g_new0(ChardevInfo, 1);
        info->label = g_strdup(st->id);
        info->filename = g_strdup(st->filename);
        info->frontend_open = st->frontend_open;
        ChardevInfoList *e = g_new0(ChardevInfoList, 1);
        e->value = info;
        e->next = head;
        head = e;
    }
    g_ptr_array_free(all, TRUE);
    return head;
}

ChardevBackendInfoList *qmp_query_chardev_backends(GError **errp)
{
    /* the backends strata has, in the order qemu-storage-daemon lists them */
    static const char *const names[] = { "null", "socket" };
    ChardevBackendInfoList *head = NULL, **tail = &head;

    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        *tail = g_new0(ChardevBackendInfoList, 1);
        (*tail)->value = g_new0(ChardevBackendInfo, 1);
        (*tail)->value->name = g_strdup(names[i]);
        tail = &(*tail)->next;
    }
    return head;
}

static bool socket_unsupported(const ChardevSocket *s, GError **errp)
{
    const char *what = NULL;
    bool server = !s->has_server || s->server;

    /* QEMU's own checks first, in its order */
    if (s->addr->type == SOCKET_ADDRESS_TYPE_FD && s->has_reconnect) {
        error_setg(errp, "'reconnect' option is incompatible with 'fd' "
                   "address type");
        return true;
    }
    if (server && s->has_reconnect) {
        error_setg(errp, "'reconnect' option is incompatible with socket in "
                   "server listen mode");
        return true;
    }
    if (!server && s->has_websocket && s->websocket) {
        error_setg(errp, "Websocket client is not implemented");
        return true;
    }
    if (!server && s->has_wait) {
        error_setg(errp, "'wait' option is incompatible with socket in "
                   "client connect mode");
        return true;
    }
    if (s->logfile) {
        what = "logfile";
    } else if (s->tls_creds || s->tls_authz) {
        what = "TLS";
    } else if (s->has_telnet && s->telnet) {
        what = "telnet";
    } else if (s->has_tn3270 && s->tn3270) {
        what = "tn3270";
    } else if (s->has_websocket && s->websocket) {
        what = "websocket";
    } else if (server && s->has_wait && s->wait) {
        /* QEMU would stop every client until one connects */
        error_setg(errp, "strata-daemon does not wait for a client in "
                   "chardev-add (wait: false)");
        return true;
    }
    if (what) {
        error_setg(errp, "strata-daemon's socket chardevs have no %s", what);
        return true;
    }
    return false;
}

static bool socket_add(const char *id, const ChardevSocket *s, GError **errp)
{
    const SocketAddressLegacy *a = s->addr;
    ChardevSocketSpec spec = {
        .fd = -1, .client = s->has_server && !s->server,
    };

    if (s->has_reconnect && s->reconnect > 0) {
        spec.reconnect = s->reconnect > UINT_MAX ? UINT_MAX : s->reconnect;
    }

    if (socket_unsupported(s, errp)) {
        return false;
    }
    switch (a->type) {
    case SOCKET_ADDRESS_TYPE_UNIX:
        if ((a->u.q_unix.data->has_abstract && a->u.q_unix.data->abstract)) {
            error_setg(errp, "strata-daemon has no abstract unix sockets");
            return false;
        }
        spec.path = a->u.q_unix.data->path;
        break;
    case SOCKET_ADDRESS_TYPE_INET:
        spec.host = a->u.inet.data->host;
        spec.port = a->u.inet.data->port;
        break;
    default:
        error_setg(errp, "strata-daemon's socket chardevs listen on unix "
                   "and inet addresses only");
        return false;
    }
    return chardev_socket_add(id, &spec, NULL, errp);
}

ChardevReturn *qmp_chardev_add(const char *id, ChardevBackend *backend,
                               GError **errp)
{
    GError *err = NULL;
    bool ok;

    if (chardev_exists(id)) {
        error_setg(errp, "Chardev with id '%s' already exists", id);
        return NULL;
    }
    if (backend->type == CHARDEV_BACKEND_KIND_NULL) {
        if (backend->u.null.data->logfile) {
            error_setg(errp, "strata-daemon's chardevs have no logfile");
            return NULL;
        }
        ok = chardev_null_add(id, &err);
    } else {
        ok = socket_add(id, backend->u.socket.data, &err);
    }
    if (!ok) {
        g_propagate_prefixed_error(errp, err, "Failed to add chardev '%s': ",
                                   id);
        return NULL;
    }
    return g_new0(ChardevReturn, 1);
}

void qmp_chardev_remove(const char *id, GError **errp)
{
    chardev_remove(id, errp);
}
