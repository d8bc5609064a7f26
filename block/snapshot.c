/*
 * Internal snapshots (strata/block-ops.h): QEMU's block/snapshot.c rules.
 * A node whose driver has no snapshots hands the request to its primary
 * child when no other child holds data (raw over qcow2, a filter), so the
 * snapshot lands in the image the data really lives in.  The node is
 * drained around changes: its parents must not write while the active L1
 * table is swapped or copied.
 */
#include <errno.h>
#include <string.h>
#include "block-int.h"
#include "strata/dirty-bitmap.h"

BlockNode *node_snapshot_fallback(BlockNode *bs)
{
    BlockChild *primary = NULL;

    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->role & CHILD_ROLE_PRIMARY) {
            primary = c;
        }
    }
    if (!primary) {
        return NULL;
    }
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c != primary && (c->role & (CHILD_ROLE_DATA | CHILD_ROLE_METADATA |
                                        CHILD_ROLE_FILTERED))) {
            return NULL;
        }
    }
    return primary->bs;
}

typedef enum { SNAP_LIST, SNAP_CREATE, SNAP_GOTO, SNAP_DELETE } SnapOp;

static bool can_do(const BlockDriver *drv, SnapOp op)
{
    switch (op) {
    case SNAP_LIST:
        return drv->snapshot_list;
    case SNAP_CREATE:
        return drv->snapshot_create;
    case SNAP_GOTO:
        return drv->snapshot_goto;
    case SNAP_DELETE:
        return drv->snapshot_delete;
    }
    return false;
}

/* The node that does the work for op, or NULL if none can. */
static BlockNode *snapshot_node(BlockNode *bs, SnapOp op)
{
    while (bs && !can_do(bs->drv, op)) {
        bs = node_snapshot_fallback(bs);
    }
    return bs;
}

typedef struct SnapCall {
    SnapOp op;
    BlockNode *bs;
    NodeSnapshot *sn;
    NodeSnapshot **list;
    const char *id, *name;
    GError **errp;
    int ret;
} SnapCall;

static void coroutine_fn snap_co(void *opaque)
{
    SnapCall *c = opaque;
    BlockNode *bs = c->bs;

    switch (c->op) {
    case SNAP_LIST:
        c->ret = bs->drv->snapshot_list(bs, c->list);
        return;
    case SNAP_CREATE:
        c->ret = bs->drv->snapshot_create(bs, c->sn, c->errp);
        break;
    case SNAP_GOTO:
        c->ret = bs->drv->snapshot_goto(bs, c->name, c->errp);
        break;
    case SNAP_DELETE:
        c->ret = bs->drv->snapshot_delete(bs, c->id, c->name, c->errp);
        break;
    }
}

/*
 * Every failure comes with a message: where the driver gives only a
 * number, its strerror() text (what qemu-img prints then).
 */
static int fail_errno(int ret, GError **errp, GError *local)
{
    if (local) {
        g_propagate_error(errp, local);
    } else {
        error_setg(errp, "%s", g_strerror(-ret));
    }
    return ret;
}

/* Run c on the node that can do it, drained unless it only reads. */
static int snap_call(BlockNode *top, SnapCall *c)
{
    GError **errp = c->errp, *local = NULL;

    c->bs = snapshot_node(top, c->op);
    if (!c->bs) {
        return -ENOTSUP;
    }
    c->errp = &local;
    if (c->op != SNAP_LIST) {
        node_drain_begin(c->bs);
    }
    block_co_call(c->bs, snap_co, c);
    if (c->op != SNAP_LIST) {
        node_drain_end(c->bs);
    }
    c->errp = errp;
    if (c->ret < 0 && c->op != SNAP_LIST) {
        return fail_errno(c->ret, errp, local);
    }
    g_clear_error(&local);
    return c->ret;
}

int node_snapshot_list(BlockNode *bs, NodeSnapshot **list)
{
    SnapCall c = { .op = SNAP_LIST, .list = list };

    *list = NULL;
    return snap_call(bs, &c);
}

int node_snapshot_find(BlockNode *bs, const char *id, const char *name,
                       NodeSnapshot *out)
{
    NodeSnapshot *list = NULL;
    int n = node_snapshot_list(bs, &list);
    int found = 0;

    for (int i = 0; i < n && !found; i++) {
        if ((!id || !strcmp(list[i].id_str, id)) &&
            (!name || !strcmp(list[i].name, name))) {
            *out = list[i];
            found = 1;
        }
    }
    g_free(list);
    return n < 0 ? n : found;
}

bool node_snapshot_supported(BlockNode *bs)
{
    NodeSnapshot *list = NULL;
    int n = node_snapshot_list(bs, &list);

    g_free(list);
    return n != -ENOTSUP;
}

static void not_supported(BlockNode *bs, GError **errp)
{
    error_setg(errp, "Block format '%s' used by device '%s' does not "
               "support internal snapshots", bs->drv->format_name,
               node_device_name(bs));
}

int node_snapshot_create(BlockNode *bs, NodeSnapshot *sn, GError **errp)
{
    SnapCall c = { .op = SNAP_CREATE, .sn = sn, .errp = errp };
    int ret = snap_call(bs, &c);

    if (ret == -ENOTSUP && !c.bs) {
        not_supported(bs, errp);
    }
    return ret;
}

/*
 * QEMU's bdrv_snapshot_goto() refuses on every node it passes on the way
 * down to the one that reverts (a filter or raw node, then the image),
 * before asking whether any of them can: a dirty bitmap of such a node
 * records changes relative to data the revert throws away, and a
 * persistent one would be stored as if it still described the image.
 * Any bitmap counts, anonymous ones (a job's) and disabled ones too.
 */
static bool goto_blocked_by_bitmaps(BlockNode *top, GError **errp)
{
    for (BlockNode *bs = top; bs; bs = node_snapshot_fallback(bs)) {
        if (node_dirty_bitmaps(bs)) {
            error_setg(errp, "Device has active dirty bitmaps");
            return true;
        }
        if (can_do(bs->drv, SNAP_GOTO)) {
            break;
        }
    }
    return false;
}

int node_snapshot_goto(BlockNode *bs, const char *id_or_name, GError **errp)
{
    SnapCall c = { .op = SNAP_GOTO, .name = id_or_name, .errp = errp };
    int ret;

    if (goto_blocked_by_bitmaps(bs, errp)) {
        return -EBUSY;
    }
    ret = snap_call(bs, &c);

    if (ret == -ENOTSUP && !c.bs) {
        error_setg(errp, "Block driver does not support snapshots");
    }
    return ret;
}

int node_snapshot_delete(BlockNode *bs, const char *id, const char *name,
                         GError **errp)
{
    SnapCall c = { .op = SNAP_DELETE, .id = id, .name = name, .errp = errp };
    int ret = snap_call(bs, &c);

    if (ret == -ENOTSUP && !c.bs) {
        not_supported(bs, errp);
    }
    return ret;
}

typedef struct LoadTmpCall {
    BlockNode *bs;
    const char *id, *name;
    GError **errp;
    int ret;
} LoadTmpCall;

static void coroutine_fn load_tmp_co(void *opaque)
{
    LoadTmpCall *c = opaque;

    c->ret = c->bs->drv->snapshot_load_tmp(c->bs, c->id, c->name, c->errp);
}

int node_snapshot_load_tmp(BlockNode *bs, const char *id, const char *name,
                           GError **errp)
{
    GError *local = NULL;
    LoadTmpCall c = { bs, id, name, &local, 0 };

    if (!id && !name) {
        error_setg(errp, "snapshot_id and name are both NULL");
        return -EINVAL;
    }
    if (!bs->read_only) {
        error_setg(errp, "Device is not readonly");
        return -EINVAL;
    }
    if (!bs->drv->snapshot_load_tmp) {
        error_setg(errp, "Block format '%s' used by device '%s' does not "
                   "support temporarily loading internal snapshots",
                   bs->drv->format_name, node_device_name(bs));
        return -ENOTSUP;
    }
    block_co_call(bs, load_tmp_co, &c);
    if (c.ret < 0) {
        return fail_errno(c.ret, errp, local);
    }
    return c.ret;
}
