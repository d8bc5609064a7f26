/*
 * The NBD server's commands: nbd-server-start, nbd-server-stop, and the
 * legacy nbd-server-add / nbd-server-remove; --nbd-server.  The server is
 * strata/nbd-server.h, which already speaks QEMU 7.2's errors; this file
 * turns QAPI's addresses into its own and adds the checks QEMU makes
 * before the export layer sees a request.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "strata/block.h"
#include "strata/error.h"
#include "strata/nbd-server.h"
#include "qapi-commands.h"
#include "qapi-runtime.h"
#include "qapi-visit.h"
#include "nbd-export.h"
#include "objects.h"

/*
 * A descriptor address.  qemu-storage-daemon 7.2 takes one from its command
 * line only (a number, which must be a socket); from a monitor it refuses
 * every one, by number or by name.  strata-daemon answers the same.
 */
static int socket_fd(const char *str, bool monitor, GError **errp)
{
    char *end;
    struct stat st;

    if (monitor) {
        error_setg(errp, "only QEMU supports file descriptor passing");
        return -1;
    }
    errno = 0;
    long n = strtol(str, &end, 10);
    if (errno || n < INT_MIN || n > INT_MAX) {
        /* QEMU names only an overflow's errno; text it cannot read, not */
        error_setg_errno(errp, ERANGE, "Unable to parse FD number %s", str);
        return -1;
    }
    if (end == str || *end) {
        error_setg(errp, "Unable to parse FD number %s", str);
        return -1;
    }
    if (fstat((int)n, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        error_setg(errp, "File descriptor '%s' is not a socket", str);
        if (n >= 0) {
            close((int)n);
        }
        return -1;
    }
    return (int)n;
}

static bool flat_to_addr(const SocketAddress *sa, bool monitor,
                         NbdServerAddr *addr, GError **errp)
{
    memset(addr, 0, sizeof(*addr));
    addr->fd = -1;
    switch (sa->type) {
    case SOCKET_ADDRESS_TYPE_UNIX:
        if (sa->u.q_unix.has_abstract && sa->u.q_unix.abstract) {
            error_setg(errp, "Abstract unix socket addresses are not "
                       "supported by strata's NBD server");
            return false;
        }
        addr->type = NBD_ADDR_UNIX;
        addr->path = sa->u.q_unix.path;
        return true;
    case SOCKET_ADDRESS_TYPE_INET: {
        const InetSocketAddress *in = &sa->u.inet;
        if (in->has_keep_alive) {
            /* QEMU's listener refuses it too */
            error_setg(errp, "keep-alive option is not supported for passive "
                       "sockets");
            return false;
        }
        if (in->has_to || (in->has_mptcp && in->mptcp)) {
            error_setg(errp, "The inet options 'to' and 'mptcp' are not "
                       "supported by strata's NBD server");
            return false;
        }
        addr->type = NBD_ADDR_INET;
        addr->host = in->host;
        addr->port = in->port;
        addr->ipv4 = in->has_ipv4 && in->ipv4;
        addr->ipv6 = in->has_ipv6 && in->ipv6;
        return true;
    }
    case SOCKET_ADDRESS_TYPE_FD:
        addr->type = NBD_ADDR_FD;
        addr->fd = socket_fd(sa->u.fd.str, monitor, errp);
        return addr->fd >= 0;
    case SOCKET_ADDRESS_TYPE_VSOCK:
    default:
        error_setg(errp, "vsock addresses are not supported by strata's NBD "
                   "server");
        return false;
    }
}

bool qapi_nbd_server_start_flat(SocketAddress *sa, bool monitor,
                                const char *tls_creds,
                                const char *tls_authz,
                                bool has_max_connections,
                                uint32_t max_connections, GError **errp)
{
    NbdServerAddr addr;

    (void)tls_authz;    /* QEMU keeps it unchecked until a TLS client comes */
    if (nbd_server_is_running()) {
        error_setg(errp, "NBD server already running");
        return false;
    }
    if (!flat_to_addr(sa, monitor, &addr, errp) ||
        !nbd_server_start(&addr, has_max_connections ? max_connections : 0,
                          errp)) {
        return false;
    }
    qapi_exports_init();
    if (tls_creds) {
        /*
         * QEMU looks the credentials object up once it listens.  strata has
         * no TLS credentials objects, so no id can name one: QEMU's message
         * for an object of another type, or for none, is the truth here.
         */
        if (user_object_find(tls_creds)) {
            error_setg(errp, "Object with id '%s' is not TLS credentials",
                       tls_creds);
        } else {
            error_setg(errp, "No TLS credentials with id '%s'", tls_creds);
        }
        nbd_server_stop(NULL);
        return false;
    }
    return true;
}

void qmp_nbd_server_start(SocketAddressLegacy *addr, const char *tls_creds,
                          const char *tls_authz, bool has_max_connections,
                          uint32_t max_connections, GError **errp)
{
    SocketAddress flat = { .type = addr->type };

    /* the legacy form wraps each branch in {"data": ...} */
    switch (addr->type) {
    case SOCKET_ADDRESS_TYPE_INET:
        flat.u.inet = *addr->u.inet.data;
        break;
    case SOCKET_ADDRESS_TYPE_UNIX:
        flat.u.q_unix = *addr->u.q_unix.data;
        break;
    case SOCKET_ADDRESS_TYPE_VSOCK:
        flat.u.vsock = *addr->u.vsock.data;
        break;
    case SOCKET_ADDRESS_TYPE_FD:
        flat.u.fd = *addr->u.fd.data;
        break;
    default:
        g_assert_not_reached();
    }
    qapi_nbd_server_start_flat(&flat, true, tls_creds, tls_authz,
                               has_max_connections, max_connections, errp);
}

bool qapi_nbd_server_cmdline(const char *arg, GError **errp)
{
    bool keyval;
    json_t *tree = qapi_parse_cmdline(arg, NULL, &keyval, errp);

    if (!tree) {
        return false;
    }
    NbdServerOptions *o = keyval ? qapi_NbdServerOptions_from_keyval(tree, errp)
                                 : qapi_NbdServerOptions_from_json(tree, errp);
    json_decref(tree);
    if (!o) {
        return false;
    }
    bool ok = qapi_nbd_server_start_flat(o->addr, false, o->tls_creds,
                                         o->tls_authz, o->has_max_connections,
                                         o->max_connections, errp);
    qapi_free_NbdServerOptions(o);
    return ok;
}

void qmp_nbd_server_stop(GError **errp)
{
    size_t n;
    NbdExportInfo *info = nbd_export_query(&n);

    /*
     * Oldest first, as QEMU's exports go (and their BLOCK_EXPORT_DELETED
     * events come); the server then waits for every one to be gone.
     */
    for (size_t i = n; i-- > 0;) {
        if (!info[i].shutting_down) {
            nbd_export_del(info[i].id, NBD_REMOVE_HARD, NULL);
        }
    }
    nbd_export_info_free(info, n);
    nbd_server_stop(errp);
}

void qmp_nbd_server_add(NbdServerAddOptions *arg, GError **errp)
{
    /* QEMU finds the device before it looks at anything else */
    if (!node_find(arg->device)) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                   arg->device, arg->device);
        return;
    }
    NbdExportBitmap bitmap = { .name = arg->bitmap };
    qapi_exports_init();
    NbdExportOptions o = {
        .node_name = arg->device,
        .name = arg->name,
        .description = arg->description,
        .writable = arg->has_writable && arg->writable,
        .legacy_add = true,
        .bitmaps = &bitmap,
        .nr_bitmaps = arg->bitmap ? 1 : 0,
    };
    nbd_export_add(&o, errp);
    /* no hint line in a QMP error (an inconsistent bitmap's) */
    if (errp && *errp) {
        char *nl = strchr((*errp)->message, '\n');
        if (nl) {
            *nl = '\0';
        }
    }
}

void qmp_nbd_server_remove(const char *name, bool has_mode,
                           BlockExportRemoveMode mode, GError **errp)
{
    /* every export strata has is an NBD export: block-export-del's rules */
    qmp_block_export_del(name, has_mode, mode, errp);
}
