/*
 * What drivers can do and what a node says about itself, for callers
 * that do not see BlockDriver or BlockNode fields (strata/block-ops.h).
 */
#include <errno.h>
#include <string.h>
#include "block-int.h"

bool driver_has(const BlockDriver *drv, DriverFeature f)
{
    switch (f) {
    case DRIVER_CAN_CREATE:
        return drv->create != NULL;
    case DRIVER_CAN_AMEND:
        return drv->amend != NULL;
    case DRIVER_CAN_COMPRESS:
        return drv->co_pwritev_compressed != NULL;
    case DRIVER_CAN_MEASURE:
        return drv->measure != NULL;
    case DRIVER_IS_FORMAT:
        return drv->is_format;
    case DRIVER_IS_FILTER:
        return drv->is_filter;
    case DRIVER_HAS_BACKING:
        return drv->supports_backing;
    }
    return false;
}

const char *driver_format_name(const BlockDriver *drv)
{
    return drv->format_name;
}

const char *driver_protocol_name(const BlockDriver *drv)
{
    return drv->protocol_name;
}

const char *const *driver_create_opts(const BlockDriver *drv)
{
    return drv->create_opts;
}

BlockChild *node_file_child(BlockNode *bs)
{
    return bs->file;
}

BlockChild *node_backing_child(BlockNode *bs)
{
    return bs->backing;
}

BlockNode *node_file(BlockNode *bs)
{
    return bs->file ? bs->file->bs : NULL;
}

BlockNode *node_backing(BlockNode *bs)
{
    return bs->backing ? bs->backing->bs : NULL;
}

unsigned child_role(const BlockChild *c)
{
    return c->role;
}

const char *node_backing_file(const BlockNode *bs)
{
    return bs->backing_file;
}

const char *node_backing_format(const BlockNode *bs)
{
    return bs->backing_format;
}

bool node_is_encrypted(const BlockNode *bs)
{
    return bs->encrypted;
}

/* QEMU's bdrv_get_device_name(): the name of the backend on top of bs. */
const char *node_device_name(BlockNode *bs)
{
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (!strcmp(c->klass->kind, "backend")) {
            const char *name = blk_name(c->opaque);
            return name ? name : "";
        }
    }
    return "";
}

void node_get_limits(const BlockNode *bs, BlockLimits *bl)
{
    *bl = bs->bl;
}

bool node_is_inserted(BlockNode *bs)
{
    if (!bs || !bs->drv) {
        return false;
    }
    if (bs->drv->is_inserted && !bs->drv->is_inserted(bs)) {
        return false;
    }
    for (GList *l = bs->children; l; l = l->next) {
        if (!node_is_inserted(((BlockChild *)l->data)->bs)) {
            return false;
        }
    }
    return true;
}

/*
 * bdrv_get_info(): the driver's answer (cleared first), or, for a filter
 * without one, its filtered child's; -ENOTSUP when nobody answers.
 */
int node_get_info(BlockNode *bs, BlockDriverInfo *bdi)
{
    while (bs) {
        if (bs->drv->get_info) {
            memset(bdi, 0, sizeof(*bdi));
            return bs->drv->get_info(bs, bdi);
        }
        bs = node_filtered_child(bs);
    }
    return -ENOTSUP;
}

json_t *node_get_specific_info(BlockNode *bs, GError **errp)
{
    return bs->drv->get_specific_info ? bs->drv->get_specific_info(bs, errp)
                                      : NULL;
}

NodeImageInfo *node_query_image_info(BlockNode *bs, GError **errp)
{
    int64_t size = node_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "Can't get image size '%s'",
                         node_get_filename(bs));
        return NULL;
    }
    NodeImageInfo *info = g_new0(NodeImageInfo, 1);
    info->filename = g_strdup(node_get_filename(bs));
    info->format = g_strdup(node_get_format_name(bs));
    /* As QEMU: a driver that can answer get_info has a dirty flag. */
    BlockDriverInfo bdi;
    if (node_get_info(bs, &bdi) == 0) {
        info->has_dirty_flag = true;
        info->dirty_flag = bdi.is_dirty;
        info->cluster_size = bdi.cluster_size;
    }
    info->actual_size = node_get_allocated_file_size(bs);
    info->has_actual_size = info->actual_size >= 0;
    info->virtual_size = size;
    info->encrypted = node_is_encrypted(bs);
    if (bs->backing_file[0]) {
        info->backing_filename = g_strdup(bs->backing_file);
        /* The full name is given even when it is the same. */
        info->full_backing_filename = node_get_full_backing_filename(bs);
        if (bs->backing_format[0]) {
            info->backing_filename_format = g_strdup(bs->backing_format);
        }
    }
    int n = node_snapshot_list(bs, &info->snapshots);
    if (n > 0) {
        info->nb_snapshots = n;
    } else {
        g_free(info->snapshots);
        info->snapshots = NULL;
    }
    GError *err = NULL;
    info->format_specific = node_get_specific_info(bs, &err);
    if (err) {
        g_propagate_error(errp, err);
        node_image_info_free(info);
        return NULL;
    }
    return info;
}

void node_image_info_free(NodeImageInfo *info)
{
    if (!info) {
        return;
    }
    g_free(info->filename);
    g_free(info->format);
    g_free(info->backing_filename);
    g_free(info->full_backing_filename);
    g_free(info->backing_filename_format);
    g_free(info->snapshots);
    json_decref(info->format_specific);
    g_free(info);
}

/* ---- blkdebug breakpoints: the first node down the tree that has them ---- */

typedef enum { DBG_BREAK, DBG_REMOVE, DBG_RESUME, DBG_SUSPENDED } DebugOp;

static BlockNode *debug_node(BlockNode *bs, DebugOp op)
{
    for (; bs && bs->drv; bs = node_primary_child(bs)) {
        const BlockDriver *drv = bs->drv;
        if ((op == DBG_BREAK && drv->debug_breakpoint) ||
            (op == DBG_REMOVE && drv->debug_remove_breakpoint) ||
            (op == DBG_RESUME && drv->debug_resume) ||
            (op == DBG_SUSPENDED && drv->debug_is_suspended)) {
            return bs;
        }
    }
    return NULL;
}

int node_debug_breakpoint(BlockNode *bs, const char *event, const char *tag)
{
    bs = debug_node(bs, DBG_BREAK);
    return bs ? bs->drv->debug_breakpoint(bs, event, tag) : -ENOTSUP;
}

int node_debug_remove_breakpoint(BlockNode *bs, const char *tag)
{
    bs = debug_node(bs, DBG_REMOVE);
    return bs ? bs->drv->debug_remove_breakpoint(bs, tag) : -ENOTSUP;
}

int node_debug_resume(BlockNode *bs, const char *tag)
{
    bs = debug_node(bs, DBG_RESUME);
    return bs ? bs->drv->debug_resume(bs, tag) : -ENOTSUP;
}

int node_debug_is_suspended(BlockNode *bs, const char *tag)
{
    bs = debug_node(bs, DBG_SUSPENDED);
    return bs ? bs->drv->debug_is_suspended(bs, tag) : -ENOTSUP;
}
