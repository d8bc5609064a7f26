/*
 * Block exports: block-export-add, block-export-del, query-block-exports,
 * the BLOCK_EXPORT_DELETED event and --export.  Every export strata has is
 * an NBD export (strata/nbd-server.h); the export holds its node through a
 * BlockBackend, so it is a parent in the graph like any other user.
 */
#include <string.h>

#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/error.h"
#include "strata/nbd-server.h"
#include "strata/qmp.h"
#include "strata/id.h"
#include "qapi-commands.h"
#include "qapi-events.h"
#include "qapi-runtime.h"
#include "qapi-visit.h"
#include "nbd-export.h"
#include "objects.h"

/*
 * block-export-del requests waiting for their export to be deleted: the id
 * maps to whether BLOCK_EXPORT_DELETED has been sent for it.
 */
static CoQueue deleted_waiters;
static GHashTable *deleted_pending;

static void export_deleted(const char *id, void *opaque)
{
    (void)opaque;
    qapi_event_send_block_export_deleted(id);
    if (g_hash_table_contains(deleted_pending, id)) {
        g_hash_table_replace(deleted_pending, g_strdup(id),
                             GINT_TO_POINTER(1));
        co_queue_restart_all(&deleted_waiters);
    }
}

void qapi_exports_close_all(void)
{
    if (nbd_server_is_running()) {
        nbd_server_stop(NULL);
    }
}

void qapi_exports_init(void)
{
    static bool done;

    if (done) {
        return;
    }
    done = true;
    co_queue_init(&deleted_waiters);
    deleted_pending = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                            NULL);
    nbd_export_add_deleted_listener(export_deleted, NULL);
}

void qmp_block_export_add(BlockExportOptions *arg, GError **errp)
{
    const BlockExportOptionsNbd *nbd = &arg->u.nbd;

    bool fixed = arg->has_fixed_iothread && arg->fixed_iothread;
    if (arg->iothread) {
        /*
         * QEMU looks the iothread up after these checks, then moves the
         * node (and its graph) into it before anything else can fail; a
         * failed move counts only with fixed-iothread.
         */
        BlockNode *bs = node_find(arg->node_name);
        if (id_wellformed(arg->id) && bs && !(node_is_read_only(bs) && arg->has_writable &&
                    arg->writable) && !nbd_export_exists(arg->id)) {
            user_objects_root_touch();
            UserObject *o = user_iothread_by_path(arg->iothread);
            if (!o) {
                error_setg(errp, "iothread \"%s\" not found", arg->iothread);
                return;
            }
            if (!node_set_loop(bs, iothread_loop(o->iothread),
                               fixed ? errp : NULL) && fixed) {
                return;
            }
        }
    }
    /* Names as the schema gave them: a bare one is looked up below. */
    g_autofree NbdExportBitmap *bitmaps = NULL;
    size_t nr_bitmaps = 0;
    for (BlockDirtyBitmapOrStrList *l = nbd->bitmaps; l; l = l->next) {
        nr_bitmaps++;
    }
    bitmaps = g_new0(NbdExportBitmap, nr_bitmaps);
    size_t i = 0;
    for (BlockDirtyBitmapOrStrList *l = nbd->bitmaps; l; l = l->next, i++) {
        if (l->value->type == QTYPE_QSTRING) {
            bitmaps[i].name = l->value->u.local;
        } else {
            bitmaps[i].node = l->value->u.external.node;
            bitmaps[i].name = l->value->u.external.name;
        }
    }
    qapi_exports_init();
    NbdExportOptions o = {
        .id = arg->id,
        .node_name = arg->node_name,
        .name = nbd->name,
        .description = nbd->description,
        .writable = arg->has_writable && arg->writable,
        .writethrough = arg->has_writethrough && arg->writethrough,
        .fixed_loop = fixed,
        .allocation_depth = nbd->has_allocation_depth &&
                            nbd->allocation_depth,
        .bitmaps = bitmaps,
        .nr_bitmaps = nr_bitmaps,
    };
    nbd_export_add(&o, errp);
    /* A bitmap's hint line is for people (QEMU prints it on a terminal
     * for --export, never in a QMP error). */
    if (errp && *errp && qmp_session_current()) {
        char *nl = strchr((*errp)->message, '\n');
        if (nl) {
            *nl = '\0';
        }
    }
}

void qmp_block_export_del(const char *id, bool has_mode,
                          BlockExportRemoveMode mode, GError **errp)
{
    bool hard = has_mode && mode == BLOCK_EXPORT_REMOVE_MODE_HARD;

    /*
     * An export nobody is connected to goes at once in QEMU, so its
     * BLOCK_EXPORT_DELETED comes before the reply; with clients QEMU
     * replies first and the event follows once they are gone.  Safe mode
     * succeeds exactly when there are no clients, so try it first: a hard
     * removal of an export without clients is the same thing.
     */
    if (hard && !nbd_export_del(id, NBD_REMOVE_SAFE, NULL)) {
        nbd_export_del(id, NBD_REMOVE_HARD, errp);
        return;
    }
    if (!hard && !nbd_export_del(id, NBD_REMOVE_SAFE, errp)) {
        return;
    }
    /*
     * Here the export goes in a bottom half queued by nbd_export_del()
     * (releasing its backend runs the loop): wait for its event.
     */
    if (!in_coroutine()) {
        return;
    }
    if (nbd_export_exists(id)) {
        g_hash_table_replace(deleted_pending, g_strdup(id),
                             GINT_TO_POINTER(0));
        while (!g_hash_table_lookup(deleted_pending, id)) {
            co_queue_wait(&deleted_waiters);
        }
        g_hash_table_remove(deleted_pending, id);
    }
}

BlockExportInfoList *qmp_query_block_exports(GError **errp)
{
    size_t n;
    NbdExportInfo *info = nbd_export_query(&n);
    BlockExportInfoList *head = NULL, **tail = &head;

    (void)errp;
    for (size_t i = 0; i < n; i++) {
        BlockExportInfo *e = g_new0(BlockExportInfo, 1);
        e->id = g_strdup(info[i].id);
        e->type = BLOCK_EXPORT_TYPE_NBD;
        e->node_name = g_strdup(info[i].node_name);
        e->shutting_down = info[i].shutting_down;
        BlockExportInfoList *l = g_new0(BlockExportInfoList, 1);
        l->value = e;
        *tail = l;
        tail = &l->next;
    }
    nbd_export_info_free(info, n);
    return head;
}

bool qapi_export_cmdline(const char *arg, GError **errp)
{
    bool keyval;
    /* a leading bare word is the type, as qemu-storage-daemon reads it */
    json_t *tree = qapi_parse_cmdline(arg, "type", &keyval, errp);

    if (!tree) {
        return false;
    }
    BlockExportOptions *o = keyval
        ? qapi_BlockExportOptions_from_keyval(tree, errp)
        : qapi_BlockExportOptions_from_json(tree, errp);
    json_decref(tree);
    if (!o) {
        return false;
    }
    GError *err = NULL;
    qmp_block_export_add(o, &err);
    qapi_free_BlockExportOptions(o);
    if (err) {
        g_propagate_error(errp, err);
        return false;
    }
    return true;
}
