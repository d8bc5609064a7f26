/*
 * Snapshots over QMP: external ones (blockdev-snapshot puts an open node
 * on top of another, blockdev-snapshot-sync creates or opens the image
 * first) and internal ones (blockdev-snapshot-internal-sync,
 * blockdev-snapshot-delete-internal-sync).  The first three are
 * transaction actions, and as commands they run as a transaction of one,
 * as in QEMU 7.2, whose checks, their order and messages these follow.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "block-job-args.h"
#include "transaction.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/op-blockers.h"
#include "../tools/common/create-opts.h"
#include "qapi-commands.h"

/* ---- External snapshots ---- */

typedef struct ExternalSnapshot {
    BlockNode *old_bs;          /* referenced and drained until clean */
    BlockNode *new_bs;          /* referenced until clean */
    bool new_drained;           /* new_bs drained until clean */
    bool appended;              /* new_bs is over old_bs, with its parents */
} ExternalSnapshot;

/*
 * QEMU's bdrv_append(): old_bs becomes new_bs's backing node and new_bs
 * takes old_bs's parents (all but that edge), or nothing changes.
 */
static bool append_overlay(ExternalSnapshot *st, GError **errp)
{
    BlockChild *c = node_attach_child(st->new_bs, st->old_bs, "backing",
                                      CHILD_ROLE_COW, errp);

    if (!c) {
        return false;
    }
    if (!node_replace(st->old_bs, st->new_bs, errp)) {
        child_detach(c, NULL);
        return false;
    }
    st->appended = true;
    node_refresh_filename(st->new_bs);
    return true;
}

/* QEMU's bdrv_img_create() refuses a backing file for such a format. */
static bool check_backing_support(const char *format, GError **errp)
{
    const BlockDriver *drv = driver_find(format);
    const char *const *opt = drv ? driver_create_opts(drv) : NULL;

    if (!drv) {
        error_setg(errp, "Unknown file format '%s'", format);
        return false;
    }
    if (!driver_has(drv, DRIVER_CAN_CREATE)) {
        error_setg(errp, "Format driver '%s' does not support image "
                   "creation", format);
        return false;
    }
    for (; opt && *opt; opt++) {
        if (!strcmp(*opt, "backing_file")) {
            return true;
        }
    }
    error_setg(errp, "Backing file not supported for file format '%s'",
               format);
    return false;
}

/* blockdev-snapshot-sync: create the image unless mode=existing, open it. */
static BlockNode *open_new_overlay(BlockdevSnapshotSync *s, BlockNode *old_bs,
                                   bool announce,
                                   GError **errp)
{
    const char *format = s->format ? s->format : "qcow2";
    NewImageMode mode = s->has_mode ? s->mode : NEW_IMAGE_MODE_ABSOLUTE_PATHS;
    json_t *options;
    int flags;

    if (s->node_name && !s->snapshot_node_name) {
        error_setg(errp, "New overlay node-name missing");
        return NULL;
    }
    if (s->snapshot_node_name && node_find(s->snapshot_node_name)) {
        error_setg(errp, "New overlay node-name already in use");
        return NULL;
    }
    /* The overlay is opened as the node was (access and cache mode); its
     * backing node is old_bs, attached by hand, not the file its header
     * names. */
    flags = (node_get_flags(old_bs) &
             (NODE_O_RDWR | NODE_O_NOCACHE | NODE_O_NO_FLUSH)) |
            NODE_O_NO_BACKING;

    if (mode != NEW_IMAGE_MODE_EXISTING) {
        int64_t size = node_getlength(old_bs);
        if (size < 0) {
            error_setg(errp, "bdrv_getlength failed: %s",
                       g_strerror((int)-size));
            return NULL;
        }
        if (!check_backing_support(format, errp)) {
            return NULL;
        }
        if (!strcmp(s->snapshot_file, node_get_filename(old_bs))) {
            error_setg(errp, "Error: Trying to create an image with the "
                       "same filename as the backing file");
            return NULL;
        }
        options = json_object();
        json_object_set_new(options, "size", json_integer(size));
        json_object_set_new(options, "backing_file",
                            json_string(node_get_filename(old_bs)));
        json_object_set_new(options, "backing_fmt",
                            json_string(node_get_format_name(old_bs)));
        /*
         * qemu-storage-daemon prints qemu-img's line (bdrv_img_create);
         * x-strata-machine-snapshot's overlays are made quietly (its
         * reply names them).
         */
        if (announce) {
            img_print_formatting(s->snapshot_file, format, (uint64_t)size,
                                 node_get_filename(old_bs),
                                 node_get_format_name(old_bs));
        }
        if (!image_create(format, s->snapshot_file, options, errp)) {
            return NULL;
        }
    }

    options = json_object();
    if (s->snapshot_node_name) {
        json_object_set_new(options, "node-name",
                            json_string(s->snapshot_node_name));
    }
    json_object_set_new(options, "driver", json_string(format));
    return node_open(s->snapshot_file, options, flags, errp);
}

static bool external_snapshot_prepare(TxnState *s, GError **errp)
{
    ExternalSnapshot *st = s->opaque;
    TransactionAction *action = s->action;
    const char *device, *node_name;
    uint64_t perm, shared;

    if (action->type == TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT) {
        device = node_name = action->u.blockdev_snapshot.data->node;
    } else {
        device = action->u.blockdev_snapshot_sync.data->device;
        node_name = action->u.blockdev_snapshot_sync.data->node_name;
    }
    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    st->old_bs = txn_lookup_node(device, node_name, errp);
    if (!st->old_bs) {
        return false;
    }
    node_ref(st->old_bs);
    node_drain_begin(st->old_bs);

    if (!node_is_inserted(st->old_bs)) {
        error_setg(errp, "Device '%s' has no medium", device);
        return false;
    }
    /* QEMU's op blockers: only the top of a chain takes an overlay, and
     * no node a block job uses (the newest reason named, as QEMU's). */
    if (!node_op_check(st->old_bs, BLOCK_OP_EXTERNAL_SNAPSHOT, errp)) {
        return false;
    }
    if (!node_is_read_only(st->old_bs) && node_co_flush(st->old_bs) < 0) {
        error_setg(errp, "An IO error has occurred");
        return false;
    }

    if (action->type == TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT) {
        const char *ref = action->u.blockdev_snapshot.data->overlay;
        st->new_bs = txn_lookup_node(ref, ref, errp);
        if (!st->new_bs) {
            return false;
        }
        node_ref(st->new_bs);
    } else {
        st->new_bs = open_new_overlay(action->u.blockdev_snapshot_sync.data,
                                      st->old_bs, true, errp);
        if (!st->new_bs) {
            return false;
        }
    }

    /* A parent that reads the overlay expects a complete image already;
     * one that only writes (a mirror target) does not mind. */
    node_get_cumulative_perm(st->new_bs, &perm, &shared);
    if (perm & BLK_PERM_CONSISTENT_READ) {
        error_setg(errp, "The overlay is already in use");
        return false;
    }
    if (driver_has(node_get_driver(st->new_bs), DRIVER_IS_FILTER)) {
        error_setg(errp, "Filters cannot be used as overlays");
        return false;
    }
    if (node_backing_child(st->new_bs)) {
        error_setg(errp, "The overlay already has a backing image");
        return false;
    }
    if (!driver_has(node_get_driver(st->new_bs), DRIVER_HAS_BACKING)) {
        error_setg(errp, "The overlay does not support backing images");
        return false;
    }
    /*
     * old_bs's users move to new_bs and must stay held back there until
     * the transaction ends: a write that went ahead would land in an
     * overlay that a later action's failure takes off again, and be lost.
     * QEMU 7.2 gets this from the drain of old_bs reaching its new parent;
     * a drain here covers the nodes it found when it began, so new_bs is
     * drained itself.
     */
    node_drain_begin(st->new_bs);
    st->new_drained = true;
    return append_overlay(st, errp);
}

static void external_snapshot_commit(TxnState *s)
{
    ExternalSnapshot *st = s->opaque;

    /* Only the overlay is written from now on; QEMU does not undo the
     * snapshot when this fails, and neither do we. */
    if (!node_is_read_only(st->old_bs)) {
        node_reopen(st->old_bs, NULL, true, NULL);
    }
}

static void external_snapshot_abort(TxnState *s)
{
    ExternalSnapshot *st = s->opaque;

    if (!st->appended) {
        return;
    }
    /*
     * Undo append_overlay(): the parents go back to old_bs.  The edge is
     * looked up again: the later actions' drains ran the loop, where
     * another client's blockdev-reopen of new_bs may have taken it off
     * (and freed it).
     */
    BlockChild *b = node_backing_child(st->new_bs);
    if (b && child_node(b) == st->old_bs) {
        child_detach(b, NULL);
    }
    st->appended = false;
    if (!node_replace(st->new_bs, st->old_bs, NULL)) {
        g_assert_not_reached();
    }
    /* The parents' json: names hold their children's options. */
    node_refresh_filename(st->new_bs);
    node_refresh_filename(st->old_bs);
}

static void external_snapshot_clean(TxnState *s)
{
    ExternalSnapshot *st = s->opaque;

    if (st->old_bs) {
        node_drain_end(st->old_bs);
        node_unref(st->old_bs);
    }
    /* the users' held requests go to whichever node they are on now */
    if (st->new_drained) {
        node_drain_end(st->new_bs);
    }
    /* Without parents taken from old_bs, a new overlay closes here. */
    if (st->new_bs) {
        node_unref(st->new_bs);
    }
}

const TxnActionOps txn_external_snapshot = {
    .state_size = sizeof(ExternalSnapshot),
    .prepare = external_snapshot_prepare,
    .commit = external_snapshot_commit,
    .abort = external_snapshot_abort,
    .clean = external_snapshot_clean,
};

void qmp_blockdev_snapshot_sync(const char *device, const char *node_name,
                                const char *snapshot_file,
                                const char *snapshot_node_name,
                                const char *format, bool has_mode,
                                NewImageMode mode, GError **errp)
{
    BlockdevSnapshotSync data = {
        .device = (char *)device,
        .node_name = (char *)node_name,
        .snapshot_file = (char *)snapshot_file,
        .snapshot_node_name = (char *)snapshot_node_name,
        .format = (char *)format,
        .has_mode = has_mode,
        .mode = mode,
    };
    TransactionAction action = {
        .type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC,
        .u.blockdev_snapshot_sync.data = &data,
    };

    txn_run_one(&action, errp);
}

void qmp_blockdev_snapshot(const char *node, const char *overlay,
                           GError **errp)
{
    BlockdevSnapshot data = {
        .node = (char *)node,
        .overlay = (char *)overlay,
    };
    TransactionAction action = {
        .type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT,
        .u.blockdev_snapshot.data = &data,
    };

    txn_run_one(&action, errp);
}

/* ---- Internal snapshots ---- */


/*
 * QEMU's bdrv_snapshot_find_by_id_and_name(): the first snapshot matching
 * id and name (NULL: any; not both NULL).  1 with *out filled, 0 if none,
 * -errno with "Failed to get a snapshot list: ..." in *errp.
 */
static int snap_find(BlockNode *bs, const char *id, const char *name,
                     NodeSnapshot *out, GError **errp)
{
    int ret = node_snapshot_find(bs, id, name, out);

    if (ret < 0) {
        error_setg(errp, "Failed to get a snapshot list: %s",
                   g_strerror(-ret));
    }
    return ret;
}

/* Take a snapshot named sn->name, dated now; sn->id_str is the ID it got. */
static int snap_take(BlockNode *bs, NodeSnapshot *sn, GError **errp)
{
    NodeSnapshot si = { .icount = UINT64_MAX };
    /* With no guest, QEMU's virtual clock in the daemon is wall time. */
    int64_t now = g_get_real_time();
    int ret;

    g_strlcpy(si.name, sn->name, sizeof(si.name));
    si.date_sec = (uint32_t)(now / G_USEC_PER_SEC);
    si.date_nsec = (uint32_t)(now % G_USEC_PER_SEC) * 1000;
    si.vm_clock_nsec = (uint64_t)now * 1000;
    ret = node_snapshot_create(bs, &si, errp);
    if (ret < 0) {
        return ret;
    }
    /* The driver chose the ID; the new snapshot is the one named so. */
    if (snap_find(bs, NULL, sn->name, sn, NULL) != 1) {
        *sn = si;
    }
    return 0;
}

typedef struct InternalSnapshot {
    BlockNode *bs;              /* referenced and drained until clean */
    const char *device;
    NodeSnapshot sn;
    bool created;
} InternalSnapshot;

static bool internal_snapshot_prepare(TxnState *s, GError **errp)
{
    InternalSnapshot *st = s->opaque;
    BlockdevSnapshotInternal *data =
        s->action->u.blockdev_snapshot_internal_sync.data;
    const char *device = data->device, *name = data->name;
    GError *local = NULL;
    NodeSnapshot old;
    int ret;

    if (!txn_check_completion_mode(s, errp)) {
        return false;
    }
    st->bs = txn_root_node(device, errp);
    if (!st->bs) {
        return false;
    }
    st->device = device;
    node_ref(st->bs);
    node_drain_begin(st->bs);

    if (node_is_read_only(st->bs)) {
        error_setg(errp, "Device '%s' is read only", device);
        return false;
    }
    if (!node_snapshot_supported(st->bs)) {
        error_setg(errp, "Block format '%s' used by device '%s' does not "
                   "support internal snapshots",
                   node_get_format_name(st->bs), device);
        return false;
    }
    if (!name[0]) {
        error_setg(errp, "Name is empty");
        return false;
    }
    ret = snap_find(st->bs, NULL, name, &old, errp);
    if (ret < 0) {
        return false;
    }
    if (ret) {
        error_setg(errp, "Snapshot with name '%s' already exists on device "
                   "'%s'", name, device);
        return false;
    }

    g_strlcpy(st->sn.name, name, sizeof(st->sn.name));
    ret = snap_take(st->bs, &st->sn, &local);
    if (ret < 0) {
        g_clear_error(&local);
        error_setg(errp, "Failed to create snapshot '%s' on device '%s': %s",
                   name, device, g_strerror(-ret));
        return false;
    }
    st->created = true;
    return true;
}

static void internal_snapshot_abort(TxnState *s)
{
    InternalSnapshot *st = s->opaque;
    GError *err = NULL;

    if (!st->created) {
        return;
    }
    if (node_snapshot_delete(st->bs, st->sn.id_str, st->sn.name, &err) < 0) {
        /* An abort cannot fail the command twice: say it, as QEMU does. */
        fprintf(stderr, "%s: Failed to delete snapshot with id '%s' and "
                "name '%s' on device '%s' in abort: %s\n", g_get_prgname(),
                st->sn.id_str, st->sn.name, st->device, err->message);
        g_error_free(err);
    }
}

static void internal_snapshot_clean(TxnState *s)
{
    InternalSnapshot *st = s->opaque;

    if (st->bs) {
        node_drain_end(st->bs);
        node_unref(st->bs);
    }
}

const TxnActionOps txn_internal_snapshot = {
    .state_size = sizeof(InternalSnapshot),
    .prepare = internal_snapshot_prepare,
    .abort = internal_snapshot_abort,
    .clean = internal_snapshot_clean,
};

void qmp_blockdev_snapshot_internal_sync(const char *device, const char *name,
                                         GError **errp)
{
    BlockdevSnapshotInternal data = {
        .device = (char *)device,
        .name = (char *)name,
    };
    TransactionAction action = {
        .type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_INTERNAL_SYNC,
        .u.blockdev_snapshot_internal_sync.data = &data,
    };

    txn_run_one(&action, errp);
}

SnapshotInfo *qmp_blockdev_snapshot_delete_internal_sync(const char *device,
                                                         const char *id,
                                                         const char *name,
                                                         GError **errp)
{
    BlockNode *bs = txn_root_node(device, errp);
    SnapshotInfo *info;
    NodeSnapshot sn;
    int ret;

    if (!bs) {
        return NULL;
    }
    if (!id && !name) {
        error_setg(errp, "Name or id must be provided");
        return NULL;
    }
    ret = snap_find(bs, id, name, &sn, errp);
    if (ret < 0) {
        return NULL;
    }
    if (!ret) {
        error_setg(errp, "Snapshot with id '%s' and name '%s' does not exist "
                   "on device '%s'", id ? id : "null", name ? name : "null",
                   device);
        return NULL;
    }
    if (node_snapshot_delete(bs, id, name, errp) < 0) {
        return NULL;
    }

    info = g_new0(SnapshotInfo, 1);
    info->id = g_strdup(sn.id_str);
    info->name = g_strdup(sn.name);
    info->date_sec = sn.date_sec;
    info->date_nsec = sn.date_nsec;
    info->vm_state_size = (int64_t)sn.vm_state_size;
    info->vm_clock_sec = (int64_t)(sn.vm_clock_nsec / 1000000000);
    info->vm_clock_nsec = (int64_t)(sn.vm_clock_nsec % 1000000000);
    if (sn.icount != UINT64_MAX) {
        info->has_icount = true;
        info->icount = (int64_t)sn.icount;
    }
    return info;
}

/*
 * For x-strata-machine-snapshot and -restore (qapi/cmd-machine-snapshot.c):
 * the image blockdev-snapshot-sync would create and open for old_bs, with
 * its checks and messages, not yet on top of anything.
 */
BlockNode *snapshot_open_new_overlay(BlockdevSnapshotSync *s,
                                     BlockNode *old_bs, GError **errp)
{
    return open_new_overlay(s, old_bs, false, errp);
}
