/*
 * BlockDeviceInfo and ImageInfo (see node-info.h) as the generated QAPI
 * types, from the library's description of each image.
 */
#include <string.h>
#include "node-info.h"
#include "qapi-visit.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/job.h"

static SnapshotInfo *snapshot_info(const NodeSnapshot *sn)
{
    SnapshotInfo *e = g_new0(SnapshotInfo, 1);
    e->id = g_strdup(sn->id_str);
    e->name = g_strdup(sn->name);
    e->vm_state_size = (int64_t)sn->vm_state_size;
    e->date_sec = sn->date_sec;
    e->date_nsec = sn->date_nsec;
    e->vm_clock_sec = (int64_t)(sn->vm_clock_nsec / 1000000000ull);
    e->vm_clock_nsec = (int64_t)(sn->vm_clock_nsec % 1000000000ull);
    e->has_icount = sn->icount != UINT64_MAX;
    if (e->has_icount) {
        e->icount = (int64_t)sn->icount;
    }
    return e;
}

/*
 * QEMU's bdrv_query_image_info(): one image, without its backing image.
 * The driver's format-specific data is JSON in the library; the schema's
 * union takes it through its generated input visitor.
 */
static ImageInfo *image_info(BlockNode *bs, GError **errp)
{
    /*
     * As QEMU, the filename as the graph is now: a job's filter may have
     * come or gone below bs since it was opened.
     */
    node_refresh_filename_tree(bs);
    NodeImageInfo *ni = node_query_image_info(bs, errp);
    if (!ni) {
        return NULL;
    }
    ImageInfo *info = g_new0(ImageInfo, 1);
    if (ni->format_specific) {
        json_t *spec = json_object();
        json_object_set_new(spec, "type", json_string(ni->format));
        json_object_set(spec, "data", ni->format_specific);
        info->format_specific = qapi_ImageInfoSpecific_from_json(spec, errp);
        json_decref(spec);
        if (!info->format_specific) {
            node_image_info_free(ni);
            qapi_free_ImageInfo(info);
            return NULL;
        }
    }
    info->filename = g_steal_pointer(&ni->filename);
    info->format = g_steal_pointer(&ni->format);
    info->has_dirty_flag = ni->has_dirty_flag;
    info->dirty_flag = ni->dirty_flag;
    info->has_actual_size = ni->has_actual_size;
    info->actual_size = ni->actual_size;
    info->virtual_size = ni->virtual_size;
    info->has_cluster_size = ni->cluster_size != 0;
    info->cluster_size = ni->cluster_size;
    info->has_encrypted = ni->encrypted;
    info->encrypted = ni->encrypted;
    info->backing_filename = g_steal_pointer(&ni->backing_filename);
    info->full_backing_filename = g_steal_pointer(&ni->full_backing_filename);
    info->backing_filename_format =
        g_steal_pointer(&ni->backing_filename_format);
    SnapshotInfoList **tail = &info->snapshots;
    for (int i = 0; i < ni->nb_snapshots; i++) {
        *tail = g_new0(SnapshotInfoList, 1);
        (*tail)->value = snapshot_info(&ni->snapshots[i]);
        tail = &(*tail)->next;
    }
    node_image_info_free(ni);
    return info;
}

/* The next image of a chain description: filtered child or backing. */
static BlockNode *filter_or_cow(BlockNode *bs)
{
    BlockNode *f = node_filtered_child(bs);
    return f ? f : node_backing(bs);
}

static BlockDirtyInfoList *dirty_bitmaps_info(BlockNode *bs)
{
    BlockDirtyInfoList *head = NULL, **tail = &head;

    for (GList *l = node_dirty_bitmaps(bs); l; l = l->next) {
        DirtyBitmap *bm = l->data;
        BlockDirtyInfo *e = g_new0(BlockDirtyInfo, 1);
        e->name = g_strdup(dirty_bitmap_name(bm));
        e->count = dirty_bitmap_count(bm);
        e->granularity = dirty_bitmap_granularity(bm);
        e->recording = dirty_bitmap_recording(bm);
        e->busy = dirty_bitmap_busy(bm);
        e->persistent = dirty_bitmap_persistent(bm);
        e->has_inconsistent = dirty_bitmap_inconsistent(bm);
        e->inconsistent = e->has_inconsistent;
        *tail = g_new0(BlockDirtyInfoList, 1);
        (*tail)->value = e;
        tail = &(*tail)->next;
    }
    return head;
}

BlockDeviceInfo *node_info_device(BlockNode *bs, bool flat, GError **errp)
{
    int flags = node_get_flags(bs);
    BlockNode *backing = node_backing(bs);
    BlockDeviceInfo *info = g_new(BlockDeviceInfo, 1);

    /*
     * As QEMU's bdrv_block_device_info(): the names as the graph is now
     * (a commit below bs may have changed what its json: name holds).
     */
    node_refresh_filename_tree(bs);
    /* No throttling without a device: QEMU reports zeros. */
    *info = (BlockDeviceInfo) {
        .file = g_strdup(node_get_filename(bs)),
        .node_name = g_strdup(node_get_name(bs)),
        .ro = node_is_read_only(bs),
        .drv = g_strdup(node_get_format_name(bs)),
        .backing_file = backing ? g_strdup(node_get_filename(backing)) : NULL,
        .encrypted = node_is_encrypted(bs),
        .detect_zeroes =
            (BlockdevDetectZeroesOptions)node_get_detect_zeroes(bs),
        .cache = g_new0(BlockdevCacheInfo, 1),
        .write_threshold = (int64_t)node_get_write_threshold(bs),
        .dirty_bitmaps = dirty_bitmaps_info(bs),
    };
    info->cache->writeback = true;
    info->cache->direct = flags & NODE_O_NOCACHE;
    info->cache->no_flush = flags & NODE_O_NO_FLUSH;

    /* The image, and unless flat its chain through filters and backings. */
    ImageInfo **next = &info->image;
    for (BlockNode *b = bs; b; b = filter_or_cow(b)) {
        *next = image_info(b, errp);
        if (!*next) {
            qapi_free_BlockDeviceInfo(info);
            return NULL;
        }
        next = &(*next)->backing_image;
        if (flat || !filter_or_cow(b)) {
            break;
        }
        info->backing_file_depth++;
    }
    return info;
}

const char *node_info_block_job(BlockChild *c, Job **job)
{
    if (child_parent_kind(c) != PARENT_JOB) {
        return NULL;
    }
    Job *j = child_parent(c);
    if (job_type(j) > JOB_TYPE_BACKUP) {
        return NULL;
    }
    if (job) {
        *job = j;
    }
    return j->id ? j->id : "";
}
