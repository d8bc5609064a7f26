/*
 * The NBD server: listening sockets, clients and the export table, and the
 * public API (strata/nbd-server.h) with QEMU 7.2's checks and messages.
 *
 * Lifetimes.  A client holds a reference on itself for its main coroutine
 * and one per request in flight; it is freed when the last goes.  An
 * export holds one reference while it is "user owned" (until block-export-
 * del or nbd-server-stop) and one per attached client; at zero it is
 * deleted from a bottom half (closing its backend runs the loop, which a
 * coroutine must not do) and the deleted listeners are told.  As in QEMU,
 * an export being removed is still listed (shutting-down) but no longer
 * found by clients.
 *
 * Threads.  Everything here runs in the main loop except a client's
 * transmission phase, which runs in the loop of the export's node (an
 * iothread's, block-export-add iothread=...): the client's main coroutine
 * hands the socket over and waits until transmission and every request
 * have ended there, so references, lists and frees stay in the main
 * thread.  Closing such a client from the main thread only shuts its
 * socket down; its thread sees the hang-up.  A node that moves later
 * (x-blockdev-set-iothread) keeps serving: requests go to its new loop.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"
#include "strata/socket-listen.h"
#include "strata/id.h"
#include "nbd-int.h"
#include "proto.h"

typedef struct Listener {
    int fd;
    guint watch;
} Listener;

typedef struct NbdServer {
    GArray *listeners;          /* Listener */
    char *unix_path;            /* removed at stop */
    uint32_t max_connections;
    unsigned connections;
    bool accepting;
    bool stopping;              /* no new clients while exports go away */
} NbdServer;

typedef struct DeletedListener {
    unsigned handle;
    NbdExportDeletedFunc *fn;
    void *opaque;
} DeletedListener;

static NbdServer *server;
static GList *exports;          /* every export, newest first (as QEMU lists) */
static GList *clients;          /* every connected client */
static GArray *deleted_listeners;
static unsigned next_listener_handle = 1;
static CoQueue exports_gone;    /* nbd_server_stop waiting in a coroutine */
                                /* for exports and clients to go */
static bool exports_gone_init;

/* ---- Exports ---- */

NbdExport *nbd_export_find_name(const char *name)
{
    for (GList *l = exports; l; l = l->next) {
        NbdExport *exp = l->data;
        if (exp->name && strcmp(exp->name, name) == 0) {
            return exp;
        }
    }
    return NULL;
}

static NbdExport *export_find_id(const char *id)
{
    for (GList *l = exports; l; l = l->next) {
        NbdExport *exp = l->data;
        if (strcmp(exp->id, id) == 0) {
            return exp;
        }
    }
    return NULL;
}

/* NBD_OPT_LIST names exports in the order they were added, as QEMU. */
GList *nbd_export_list(void)
{
    static GList *listed;

    g_list_free(listed);
    listed = NULL;
    for (GList *l = exports; l; l = l->next) {
        NbdExport *exp = l->data;
        if (exp->name) {
            listed = g_list_prepend(listed, exp);
        }
    }
    return listed;
}

void nbd_export_ref(NbdExport *exp)
{
    exp->refcount++;
}

static void export_delete_bh(void *opaque)
{
    NbdExport *exp = opaque;
    g_autofree char *id = g_strdup(exp->id);

    exports = g_list_remove(exports, exp);
    /* Contexts a negotiating client chose for it are gone with it. */
    for (GList *l = clients; l; l = l->next) {
        NbdClient *c = l->data;
        if (c->meta.exp == exp) {
            nbd_meta_reset(&c->meta);
        }
    }
    nbd_export_bitmaps_release(exp->bitmaps, exp->nr_bitmaps);
    blk_unref(exp->blk);
    g_free(exp->id);
    g_free(exp->name);
    g_free(exp->description);
    g_free(exp->node_name);
    g_free(exp);
    if (deleted_listeners) {
        for (guint i = 0; i < deleted_listeners->len; i++) {
            DeletedListener *dl =
                &g_array_index(deleted_listeners, DeletedListener, i);
            dl->fn(id, dl->opaque);
        }
    }
    if (exports_gone_init) {
        co_queue_restart_all(&exports_gone);
    }
}

void nbd_export_unref(NbdExport *exp)
{
    g_assert(exp->refcount > 0);
    if (--exp->refcount == 0) {
        loop_bh(export_delete_bh, exp);
    }
}

/* Stop new clients reaching it, disconnect the current ones, let go. */
static void export_shutdown(NbdExport *exp)
{
    if (exp->shutting_down) {
        return;
    }
    exp->shutting_down = true;
    g_clear_pointer(&exp->name, g_free);
    GList *copy = g_list_copy(exp->clients);
    for (GList *l = copy; l; l = l->next) {
        nbd_client_close(l->data);
    }
    g_list_free(copy);
    nbd_export_unref(exp);
}

bool nbd_export_add(const NbdExportOptions *opts, GError **errp)
{
    const char *id = opts->id;
    const char *name = opts->name;
    bool writable = opts->writable;

    if (opts->legacy_add) {
        /* nbd-server-add: the export is named after the device. */
        name = name ? name : opts->node_name;
        id = id ? id : name;
    }
    if (!id || !id_wellformed(id)) {
        error_setg(errp, "Invalid block export id");
        return false;
    }
    if (export_find_id(id)) {
        error_setg(errp, "Block export id '%s' is already in use", id);
        return false;
    }
    BlockNode *bs = opts->node_name ? node_find(opts->node_name) : NULL;
    if (!bs) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                   opts->legacy_add && opts->node_name ? opts->node_name : "",
                   opts->node_name ? opts->node_name : "");
        return false;
    }
    if (node_is_read_only(bs) && writable) {
        if (!opts->legacy_add) {
            error_setg(errp, "Cannot export read-only node as writable");
            return false;
        }
        writable = false;       /* nbd-server-add quietly downgrades */
    }

    uint64_t perm = BLK_PERM_CONSISTENT_READ | (writable ? BLK_PERM_WRITE : 0);
    BlockBackend *blk = blk_new(perm, BLK_PERM_ALL);
    if (!blk_insert_node(blk, bs, errp)) {
        blk_unref(blk);
        return false;
    }
    blk_set_enable_write_cache(blk, !opts->writethrough);
    /* the client gets the error; the monitor hears of it (BLOCK_IO_ERROR) */
    blk_set_report_io_errors(blk, true);
    blk_set_loop_policy(blk, opts->fixed_loop, NULL, NULL);

    if (!server) {
        error_setg(errp, "NBD server not running");
        goto fail;
    }
    name = name ? name : opts->node_name;
    if (strlen(name) > NBD_MAX_STRING_SIZE) {
        error_setg(errp, "export name '%s' too long", name);
        goto fail;
    }
    if (opts->description &&
        strlen(opts->description) > NBD_MAX_STRING_SIZE) {
        error_setg(errp, "description '%s' too long", opts->description);
        goto fail;
    }
    if (nbd_export_find_name(name)) {
        error_setg(errp, "NBD server already has export named '%s'", name);
        goto fail;
    }
    int64_t size = blk_getlength(blk);
    if (size < 0) {
        error_setg_errno(errp, (int)-size,
                         "Failed to determine the NBD export's length");
        goto fail;
    }
    /* The size clients were told must stay true: nobody may resize. */
    uint64_t cur_perm, cur_shared;
    blk_get_perm(blk, &cur_perm, &cur_shared);
    if (!blk_set_perm(blk, cur_perm, cur_shared & ~BLK_PERM_RESIZE, errp)) {
        goto fail;
    }

    DirtyBitmap **bitmaps = NULL;
    if (opts->nr_bitmaps) {
        bitmaps = nbd_export_bitmaps_take(bs, !writable, opts->bitmaps,
                                          opts->nr_bitmaps, errp);
        if (!bitmaps) {
            goto fail;
        }
    }

    NbdExport *exp = g_new0(NbdExport, 1);
    exp->bitmaps = bitmaps;
    exp->nr_bitmaps = opts->nr_bitmaps;
    exp->id = g_strdup(id);
    exp->name = g_strdup(name);
    exp->description = g_strdup(opts->description);
    exp->node_name = g_strdup(node_get_name(bs));
    exp->blk = blk;
    exp->size = (uint64_t)size & ~UINT64_C(511);
    exp->allocation_depth = opts->allocation_depth;
    exp->refcount = 1;
    exp->flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
                 NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
    /* QEMU 7.2 promises multi-conn consistency unless limited to one. */
    if (server->max_connections != 1) {
        exp->flags |= NBD_FLAG_CAN_MULTI_CONN;
    }
    if (writable) {
        exp->flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
                      NBD_FLAG_SEND_FAST_ZERO;
    } else {
        exp->flags |= NBD_FLAG_READ_ONLY;
    }
    exports = g_list_prepend(exports, exp);
    return true;

fail:
    blk_unref(blk);
    return false;
}

/*
 * Whether a client of the export has input its coroutine has not read yet:
 * typically NBD_CMD_DISC and the end of file of a client that just left.
 */
static bool export_clients_have_input(NbdExport *exp)
{
    for (GList *l = exp->clients; l; l = l->next) {
        NbdClient *c = l->data;
        if (!nbd_client_closing(c) && nbd_channel_input_pending(c->ch)) {
            return true;
        }
    }
    return false;
}

/*
 * A client that disconnected before the monitor command arrived must not
 * count as "in use".  QEMU reads the NBD socket in its fd handler and runs
 * the QMP command from a bottom half, so a goodbye that was already in the
 * socket is always handled first; here both wake their coroutine through
 * a bottom half and either may come first.  So let the loop turn while a
 * client has unread input, bounded: a client streaming requests stays.
 */
static void coroutine_fn export_settle_clients(const char *id)
{
    for (int turn = 0; turn < 64; turn++) {
        NbdExport *exp = export_find_id(id);
        if (!exp || exp->shutting_down || exp->refcount == 1 ||
            !export_clients_have_input(exp)) {
            return;
        }
        co_wake(co_self());
        co_yield();
    }
}

bool nbd_export_del(const char *id, NbdRemoveMode mode, GError **errp)
{
    if (mode == NBD_REMOVE_SAFE && in_coroutine()) {
        export_settle_clients(id);
    }
    NbdExport *exp = export_find_id(id);

    if (!exp) {
        error_setg(errp, "Export '%s' is not found", id);
        return false;
    }
    if (exp->shutting_down) {
        error_setg(errp, "Export '%s' is already shutting down", id);
        return false;
    }
    if (mode == NBD_REMOVE_SAFE && exp->refcount > 1) {
        error_setg(errp, "export '%s' still in use", exp->id);
        return false;
    }
    export_shutdown(exp);
    return true;
}

bool nbd_export_exists(const char *id)
{
    return export_find_id(id) != NULL;
}

NbdExportInfo *nbd_export_query(size_t *count)
{
    size_t n = g_list_length(exports), i = 0;
    NbdExportInfo *info = g_new0(NbdExportInfo, n ? n : 1);

    for (GList *l = exports; l; l = l->next, i++) {
        NbdExport *exp = l->data;
        info[i].id = g_strdup(exp->id);
        /* The node the export uses now: a snapshot's overlay takes the
         * backend's edge, and QEMU reports the overlay from then on. */
        BlockNode *bs = blk_node(exp->blk);
        info[i].node_name = g_strdup(bs ? node_get_name(bs) : exp->node_name);
        info[i].shutting_down = exp->shutting_down;
    }
    *count = n;
    return info;
}

void nbd_export_info_free(NbdExportInfo *info, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        g_free(info[i].id);
        g_free(info[i].node_name);
    }
    g_free(info);
}

unsigned nbd_export_add_deleted_listener(NbdExportDeletedFunc *fn,
                                         void *opaque)
{
    if (!deleted_listeners) {
        deleted_listeners = g_array_new(false, false, sizeof(DeletedListener));
    }
    DeletedListener dl = { next_listener_handle++, fn, opaque };
    g_array_append_val(deleted_listeners, dl);
    return dl.handle;
}

void nbd_export_remove_deleted_listener(unsigned handle)
{
    for (guint i = 0; deleted_listeners && i < deleted_listeners->len; i++) {
        if (g_array_index(deleted_listeners, DeletedListener, i).handle ==
            handle) {
            g_array_remove_index(deleted_listeners, i);
            return;
        }
    }
}

/* ---- Clients ---- */

static void server_update_accept(void);

void nbd_client_ref(NbdClient *client)
{
    client->refcount++;
}

void nbd_client_close(NbdClient *client)
{
    if (nbd_client_closing(client)) {
        return;
    }
    g_atomic_int_set(&client->closing, 1);
    StrataLoop *loop = g_atomic_pointer_get(&client->loop);
    if (loop && loop != loop_get()) {
        nbd_channel_shutdown_remote(client->ch);
        return;
    }
    nbd_channel_shutdown(client->ch);
    co_queue_restart_all(&client->inflight_slots);
}

void nbd_client_unref(NbdClient *client)
{
    if (--client->refcount > 0) {
        return;
    }
    if (client->exp) {
        client->exp->clients = g_list_remove(client->exp->clients, client);
        nbd_export_unref(client->exp);
    }
    clients = g_list_remove(clients, client);
    nbd_meta_reset(&client->meta);
    nbd_channel_free(client->ch);
    g_free(client);
    if (exports_gone_init) {
        co_queue_restart_all(&exports_gone);
    }
    if (server) {
        server->connections--;
        server_update_accept();
    }
}

/* Transmission in the export's thread, then the socket comes back. */
static void coroutine_fn transmit_elsewhere_co(void *opaque)
{
    NbdClient *client = opaque;

    nbd_channel_attach_here(client->ch);
    nbd_transmit(client);
    while (client->inflight) {
        co_queue_wait(&client->inflight_slots);
    }
    nbd_channel_detach(client->ch);
    g_atomic_pointer_set(&client->loop, loop_main());
}

static void coroutine_fn client_co(void *opaque)
{
    NbdClient *client = opaque;

    if (nbd_negotiate(client) == 0) {
        StrataLoop *home = node_loop(blk_node(client->exp->blk));
        if (home == loop_get()) {
            nbd_transmit(client);
        } else {
            nbd_channel_detach(client->ch);
            g_atomic_pointer_set(&client->loop, home);
            co_call_in(home, transmit_elsewhere_co, client);
            g_atomic_pointer_set(&client->loop, NULL);
            nbd_channel_attach_here(client->ch);
        }
    }
    nbd_client_close(client);
    nbd_client_unref(client);
}

static void client_start(int fd)
{
    NbdClient *client = g_new0(NbdClient, 1);

    client->ch = nbd_channel_new(fd);
    client->refcount = 1;
    g_queue_init(&client->outq);
    co_queue_init(&client->inflight_slots);
    clients = g_list_prepend(clients, client);
    server->connections++;
    server_update_accept();
    co_enter(co_create(client_co, client));
}

unsigned nbd_server_client_count(void)
{
    return g_list_length(clients);
}

/* ---- Listening ---- */

static void on_accept(void *opaque)
{
    Listener *l = opaque;
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

    if (fd < 0) {
        return;     /* EAGAIN, or a client that left before we got to it */
    }
    client_start(fd);
}

/* With max-connections reached, leave further clients in the backlog. */
static void server_update_accept(void)
{
    bool want = !server->stopping &&
                (!server->max_connections ||
                 server->connections < server->max_connections);

    if (want == server->accepting) {
        return;
    }
    server->accepting = want;
    for (guint i = 0; i < server->listeners->len; i++) {
        Listener *l = g_array_index(server->listeners, Listener *, i);
        if (want) {
            l->watch = loop_add_fd(l->fd, on_accept, l);
        } else {
            loop_remove_fd(l->watch);
            l->watch = 0;
        }
    }
}

static void server_add_listener(int fd)
{
    Listener *l = g_new0(Listener, 1);
    l->fd = fd;
    g_array_append_val(server->listeners, l);
}

static bool listen_unix(const char *path, GError **errp)
{
    int fd = unix_socket_listen(path, SOCK_NONBLOCK, SOMAXCONN, errp);
    if (fd < 0) {
        return false;
    }
    server_add_listener(fd);
    server->unix_path = g_strdup(path);
    return true;
}

static bool listen_inet(const NbdServerAddr *addr, GError **errp)
{
    struct addrinfo hints = {
        .ai_flags = AI_PASSIVE,
        .ai_socktype = SOCK_STREAM,
        .ai_family = AF_UNSPEC,
    }, *res;
    const char *host = addr->host;
    const char *port = addr->port ? addr->port : "";

    if (!host) {
        error_setg(errp, "host not specified");
        return false;
    }
    if (addr->ipv4 && !addr->ipv6) {
        hints.ai_family = AF_INET;
    } else if (addr->ipv6 && !addr->ipv4) {
        hints.ai_family = AF_INET6;
    }
    int rc = getaddrinfo(*host ? host : NULL, *port ? port : NULL, &hints,
                         &res);
    if (rc) {
        error_setg(errp, "address resolution failed for %s:%s: %s", host,
                   port, gai_strerror(rc));
        return false;
    }
    bool ok = false;
    int saved = 0;
    for (struct addrinfo *e = res; e; e = e->ai_next) {
        int fd = socket(e->ai_family,
                        e->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                        e->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (e->ai_family == AF_INET6) {
            /* One socket per family, so v4 and v6 do not collide. */
            setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        }
        if (bind(fd, e->ai_addr, e->ai_addrlen) < 0 ||
            listen(fd, SOMAXCONN) < 0) {
            saved = errno;
            close(fd);
            continue;
        }
        server_add_listener(fd);
        ok = true;
    }
    freeaddrinfo(res);
    if (!ok) {
        error_setg_errno(errp, saved ? saved : EADDRNOTAVAIL,
                         "Failed to bind socket");
    }
    return ok;
}

static void server_free(void)
{
    for (guint i = 0; i < server->listeners->len; i++) {
        Listener *l = g_array_index(server->listeners, Listener *, i);
        if (l->watch) {
            loop_remove_fd(l->watch);
        }
        close(l->fd);
        g_free(l);
    }
    g_array_free(server->listeners, true);
    if (server->unix_path) {
        unlink(server->unix_path);
        g_free(server->unix_path);
    }
    g_free(server);
    server = NULL;
}

bool nbd_server_start(const NbdServerAddr *addr, uint32_t max_connections,
                      GError **errp)
{
    bool ok = false;

    if (server) {
        error_setg(errp, "NBD server already running");
        return false;
    }
    server = g_new0(NbdServer, 1);
    server->listeners = g_array_new(false, false, sizeof(Listener *));
    server->max_connections = max_connections;
    switch (addr->type) {
    case NBD_ADDR_UNIX:
        ok = listen_unix(addr->path ? addr->path : "", errp);
        break;
    case NBD_ADDR_INET:
        ok = listen_inet(addr, errp);
        break;
    case NBD_ADDR_FD:
        if (addr->fd < 0) {
            error_setg(errp, "Invalid file descriptor");
        } else {
            server_add_listener(addr->fd);
            ok = true;
        }
        break;
    }
    if (!ok) {
        server_free();
        return false;
    }
    server_update_accept();
    return true;
}

bool nbd_server_is_running(void)
{
    return server != NULL;
}

bool nbd_server_stop(GError **errp)
{
    if (!server) {
        error_setg(errp, "NBD server not running");
        return false;
    }
    server->stopping = true;
    server_update_accept();

    GList *copy = g_list_copy(exports);
    for (GList *l = copy; l; l = l->next) {
        export_shutdown(l->data);
    }
    g_list_free(copy);
    /* Clients still negotiating belong to no export: end them too. */
    copy = g_list_copy(clients);
    for (GList *l = copy; l; l = l->next) {
        nbd_client_close(l->data);
    }
    g_list_free(copy);

    if (in_coroutine()) {
        if (!exports_gone_init) {
            co_queue_init(&exports_gone);
            exports_gone_init = true;
        }
        while (exports || clients) {
            co_queue_wait(&exports_gone);
        }
    } else {
        LOOP_WAIT_WHILE(exports != NULL || clients != NULL);
    }
    server_free();
    return true;
}
