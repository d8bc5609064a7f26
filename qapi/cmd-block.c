/*
 * Node commands: blockdev-add, blockdev-del, blockdev-reopen, block_resize,
 * block-set-write-threshold, change-backing-file, and the events nodes
 * raise (BLOCK_WRITE_THRESHOLD, BLOCK_IMAGE_CORRUPTED, BLOCK_IO_ERROR).
 *
 * The monitor owns the roots that blockdev-add (and --blockdev, which runs
 * it) opened: one reference each, dropped by blockdev-del or when the
 * daemon stops.
 */
#include <errno.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/error.h"
#include "strata/loop.h"
#include "strata/op-blockers.h"
#include "strata/opts.h"
#include "strata/qmp-server.h"
#include "qapi-commands.h"
#include "qapi-events.h"
#include "qapi-visit.h"
#include "block-job-args.h"
#include "transaction.h"

static GList *monitor_nodes;    /* BlockNode *, oldest first */

static void close_monitor_nodes(void)
{
    /* Newest first: a later node may sit above an older one. */
    while (monitor_nodes) {
        GList *last = g_list_last(monitor_nodes);
        BlockNode *bs = last->data;
        monitor_nodes = g_list_delete_link(monitor_nodes, last);
        node_unref(bs);
    }
}

static void on_write_threshold(BlockNode *bs, uint64_t amount,
                               uint64_t threshold)
{
    qapi_event_send_block_write_threshold(node_get_name(bs), amount,
                                          threshold);
}

static void on_image_corrupted(BlockNode *bs, const char *msg,
                               int64_t offset, int64_t size, bool fatal)
{
    /* A node without a device: QEMU names the device "". */
    qapi_event_send_block_image_corrupted(node_device_name(bs),
                                          node_get_name(bs), msg,
                                          offset >= 0, offset,
                                          size >= 0, size, fatal);
}

typedef struct {
    char *device;
    char *node_name;
    bool is_read;
    int error;
} IoError;

static gboolean send_io_error(gpointer opaque)
{
    IoError *e = opaque;

    /*
     * QEMU's send_qmp_error_event() for a device with rerror/werror=report:
     * the client got the error.  nospace is always there: QEMU's devices
     * enable the I/O status, which adds it.
     */
    qapi_event_send_block_io_error(e->device, e->node_name,
                                   e->is_read ? IO_OPERATION_TYPE_READ
                                              : IO_OPERATION_TYPE_WRITE,
                                   BLOCK_ERROR_ACTION_REPORT, true,
                                   e->error == ENOSPC, g_strerror(e->error));
    g_free(e->device);
    g_free(e->node_name);
    g_free(e);
    return G_SOURCE_REMOVE;
}

static void on_io_error(BlockNode *bs, const char *device, bool is_read,
                        int error)
{
    IoError *e = g_new(IoError, 1);

    /* An export's backend has no name: QEMU's qsd would say "" too. */
    e->device = g_strdup(device ? device : "");
    e->node_name = g_strdup(node_get_name(bs));
    e->is_read = is_read;
    e->error = error;
    if (loop_context(loop_get()) == g_main_context_default()) {
        send_io_error(e);
    } else {
        /* the monitor lives in the main loop; bs runs in an iothread */
        g_main_context_invoke(NULL, send_io_error, e);
    }
}

static const NodeEventListener listener = {
    .write_threshold = on_write_threshold,
    .image_corrupted = on_image_corrupted,
    .io_error = on_io_error,
};

/*
 * Registered before main(), so that --blockdev's nodes are closed at
 * shutdown and events reach clients from the start.
 */
__attribute__((constructor)) static void cmd_block_init(void)
{
    qmp_server_at_shutdown(QMP_SHUTDOWN_NODES, close_monitor_nodes);
    node_events_set_listener(&listener);
    /*
     * An export's clients can fail requests as fast as they send them:
     * at most one event a second per node, operation and error, as QEMU
     * limits the events a guest can trigger (docs/qmp.md).
     */
    qmp_server_throttle_event("BLOCK_IO_ERROR", 1000);
}

static bool node_is_monitor_owned(BlockNode *bs)
{
    return g_list_find(monitor_nodes, bs) != NULL;
}

/*
 * The library appends hints for people on lines of their own ("Is another
 * process using the image [x]?"); QEMU prints its hints on the terminal
 * (--blockdev) but never in a QMP error, so a client's request loses them.
 */
static void drop_hints(GError **errp)
{
    if (errp && *errp && qmp_session_current()) {
        char *nl = strchr((*errp)->message, '\n');
        if (nl) {
            *nl = '\0';
        }
    }
}

void qmp_blockdev_add(BlockdevOptions *arg, GError **errp)
{
    if (!arg->node_name) {
        error_setg(errp, "'node-name' must be specified for the root node");
        return;
    }
    json_t *tree = qapi_BlockdevOptions_to_json(arg);
    json_t *flat = opts_flatten(tree);
    json_decref(tree);
    /* QEMU's defaults for blockdev-add: read-write unless told otherwise. */
    BlockNode *bs = node_open(NULL, flat, NODE_O_RDWR, errp);
    if (bs) {
        monitor_nodes = g_list_append(monitor_nodes, bs);
    }
    drop_hints(errp);
}

void qmp_blockdev_del(const char *node_name, GError **errp)
{
    BlockNode *bs = node_find(node_name);
    if (!bs) {
        error_setg(errp, "Failed to find node with node-name='%s'", node_name);
        return;
    }
    bool has_backend = false;
    for (BlockChild *c = node_next_parent(bs, NULL); c;
         c = node_next_parent(bs, c)) {
        if (child_parent_kind(c) == PARENT_BACKEND) {
            has_backend = true;
        }
    }
    if (has_backend) {
        error_setg(errp, "Node %s is in use", node_name);
        return;
    }
    if (!node_op_check(bs, BLOCK_OP_DRIVE_DEL, errp)) {
        return;
    }
    if (!node_is_monitor_owned(bs)) {
        error_setg(errp, "Node %s is not owned by the monitor", node_name);
        return;
    }
    if (node_next_parent(bs, NULL)) {
        error_setg(errp, "Block device %s is in use", node_name);
        return;
    }
    monitor_nodes = g_list_remove(monitor_nodes, bs);
    node_unref(bs);
}

void qmp_blockdev_reopen(BlockdevOptionsList *options, GError **errp)
{
    ReopenQueue *q = NULL;

    for (BlockdevOptionsList *l = options; l; l = l->next) {
        BlockdevOptions *o = l->value;
        if (!o->node_name) {
            error_setg(errp, "node-name not specified");
            goto fail;
        }
        BlockNode *bs = node_find(o->node_name);
        if (!bs) {
            error_setg(errp, "Failed to find node with node-name='%s'",
                       o->node_name);
            goto fail;
        }
        json_t *tree = qapi_BlockdevOptions_to_json(o);
        json_t *flat = opts_flatten(tree);
        json_decref(tree);
        /* The new set replaces the node's options: what it leaves out
         * goes back to its default. */
        q = reopen_queue_add_opts(q, bs, flat, false, false);
    }
    reopen_multiple(q, errp);
    drop_hints(errp);
    return;
fail:
    reopen_queue_free(q);
}

void qmp_block_resize(const char *device, const char *node_name,
                      int64_t size, GError **errp)
{
    BlockNode *bs = txn_lookup_node(device, node_name, errp);
    if (!bs) {
        return;
    }
    if (size < 0) {
        error_setg(errp, "Parameter 'size' expects a >0 size");
        return;
    }
    /*
     * QEMU's op blockers: a backing node or a node a block job uses
     * keeps its size.  QEMU names the device argument, and prints
     * "(null)" when only node-name was given: that is its message.
     */
    if (!node_op_check(bs, BLOCK_OP_RESIZE, NULL)) {
        error_setg(errp, "Device '%s' is in use", device ? device : "(null)");
        return;
    }
    BlockBackend *blk = blk_new(BLK_PERM_RESIZE, BLK_PERM_ALL);
    if (!blk_insert_node(blk, bs, errp)) {
        drop_hints(errp);
        blk_unref(blk);
        return;
    }
    /*
     * Other users wait while the node is drained; this one goes through
     * its edge directly, as QEMU's truncate does not wait for a drain.
     */
    node_drain_begin(bs);
    if (!node_is_inserted(bs)) {
        error_setg(errp, "No medium inserted");
    } else {
        child_co_truncate(blk_root(blk), size, false, PREALLOC_MODE_OFF, errp);
        /* an inconsistent bitmap's refusal ends in a hint */
        drop_hints(errp);
    }
    node_drain_end(bs);
    blk_unref(blk);
}

void qmp_block_set_write_threshold(const char *node_name,
                                   uint64_t write_threshold, GError **errp)
{
    BlockNode *bs = node_find(node_name);
    if (!bs) {
        error_setg(errp, "Device '%s' not found", node_name);
        return;
    }
    node_set_write_threshold(bs, write_threshold);
}

/* QEMU's bdrv_is_root_node(): only devices above it, if anything. */
static bool is_root_node(BlockNode *bs)
{
    for (BlockChild *c = node_next_parent(bs, NULL); c;
         c = node_next_parent(bs, c)) {
        if (child_parent_kind(c) != PARENT_BACKEND) {
            return false;
        }
    }
    return true;
}

/* The next image down a chain, past filters (bdrv_filter_or_cow_bs). */
static BlockNode *filter_or_cow(BlockNode *bs)
{
    BlockNode *f = node_filtered_child(bs);
    return f ? f : node_backing(bs);
}

void qmp_change_backing_file(const char *device, const char *image_node_name,
                             const char *backing_file, GError **errp)
{
    BlockNode *bs = txn_lookup_node(device, device, errp);
    if (!bs) {
        return;
    }
    if (!is_root_node(bs)) {
        error_setg(errp, "Need a root block node");
        return;
    }
    if (!node_is_inserted(bs)) {
        error_setg(errp, "Device has no medium");
        return;
    }
    BlockNode *image = txn_lookup_node(NULL, image_node_name, errp);
    if (!image) {
        return;
    }
    if (!node_backing(node_skip_filters(image))) {
        error_setg(errp, "not allowing backing file change on an image "
                   "without a backing file");
        return;
    }
    BlockNode *b = bs;
    while (b && b != image) {
        b = filter_or_cow(b);
    }
    if (!b) {
        error_setg(errp, "'%s' and image file are not in the same chain",
                   device);
        return;
    }
    bool ro = node_is_read_only(image);
    if (ro && !node_reopen(image, NULL, false, errp)) {
        return;
    }
    /*
     * QEMU 7.2 records the image's own format as the backing format here,
     * whatever the backing file is: kept, so that images come out the same.
     */
    GError *err = NULL;
    int ret = node_change_backing_file(image, backing_file,
                                       node_get_format_name(image), false,
                                       &err);
    if (ret < 0) {
        g_clear_error(&err);
        error_setg_errno(errp, -ret, "Could not change backing file to '%s'",
                         backing_file);
    }
    if (ro) {
        node_reopen(image, NULL, true, ret < 0 ? NULL : errp);
    }
}
