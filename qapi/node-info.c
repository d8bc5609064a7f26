/*
 * BlockDeviceInfo and ImageInfo as JSON (see node-info.h), members in
 * QAPI order.
 */
#include <string.h>
#include "node-info.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/job.h"

static const char *const detect_zeroes_names[] = { "off", "on", "unmap" };

static json_t *snapshot_json(const NodeSnapshot *sn)
{
    json_t *e = json_object();
    json_object_set_new(e, "id", json_string(sn->id_str));
    json_object_set_new(e, "name", json_string(sn->name));
    json_object_set_new(e, "vm-state-size",
                        json_integer((json_int_t)sn->vm_state_size));
    json_object_set_new(e, "date-sec", json_integer(sn->date_sec));
    json_object_set_new(e, "date-nsec", json_integer(sn->date_nsec));
    json_object_set_new(e, "vm-clock-sec",
                        json_integer((json_int_t)(sn->vm_clock_nsec /
                                                  1000000000ull)));
    json_object_set_new(e, "vm-clock-nsec",
                        json_integer((json_int_t)(sn->vm_clock_nsec %
                                                  1000000000ull)));
    if (sn->icount != UINT64_MAX) {
        json_object_set_new(e, "icount", json_integer((json_int_t)sn->icount));
    }
    return e;
}

/* QEMU's bdrv_query_image_info(): one image, without its backing image. */
static json_t *image_info_json(BlockNode *bs, GError **errp)
{
    int64_t size = node_getlength(bs);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "Can't get image size '%s'",
                         node_get_filename(bs));
        return NULL;
    }
    json_t *info = json_object();
    json_object_set_new(info, "filename",
                        json_string_nocheck(node_get_filename(bs)));
    json_object_set_new(info, "format", json_string(node_get_format_name(bs)));

    BlockDriverInfo bdi;
    memset(&bdi, 0, sizeof(bdi));
    bool have_bdi = node_get_info(bs, &bdi) == 0;
    if (have_bdi) {
        json_object_set_new(info, "dirty-flag", json_boolean(bdi.is_dirty));
    }
    int64_t allocated = node_get_allocated_file_size(bs);
    if (allocated >= 0) {
        json_object_set_new(info, "actual-size", json_integer(allocated));
    }
    json_object_set_new(info, "virtual-size", json_integer(size));
    if (have_bdi && bdi.cluster_size != 0) {
        json_object_set_new(info, "cluster-size",
                            json_integer(bdi.cluster_size));
    }
    if (node_is_encrypted(bs)) {
        json_object_set_new(info, "encrypted", json_true());
    }
    if (node_backing_file(bs)[0]) {
        /* The full name is given even when it is the same. */
        char *full = node_get_full_backing_filename(bs);
        json_object_set_new(info, "backing-filename",
                            json_string_nocheck(node_backing_file(bs)));
        if (full) {
            json_object_set_new(info, "full-backing-filename",
                                json_string_nocheck(full));
        }
        g_free(full);
        if (node_backing_format(bs)[0]) {
            json_object_set_new(info, "backing-filename-format",
                                json_string(node_backing_format(bs)));
        }
    }
    NodeSnapshot *list = NULL;
    int n = node_snapshot_list(bs, &list);
    if (n > 0) {
        json_t *arr = json_array();
        for (int i = 0; i < n; i++) {
            json_array_append_new(arr, snapshot_json(&list[i]));
        }
        json_object_set_new(info, "snapshots", arr);
    }
    g_free(list);

    GError *err = NULL;
    json_t *data = node_get_specific_info(bs, &err);
    if (err) {
        g_propagate_error(errp, err);
        json_decref(data);
        json_decref(info);
        return NULL;
    }
    if (data) {
        /* QAPI's union: {"type": format, "data": {...}}. */
        json_t *spec = json_object();
        json_object_set_new(spec, "type", json_string(node_get_format_name(bs)));
        json_object_set_new(spec, "data", data);
        json_object_set_new(info, "format-specific", spec);
    }
    return info;
}

/* The next image of a chain description: filtered child or backing. */
static BlockNode *filter_or_cow(BlockNode *bs)
{
    BlockNode *f = node_filtered_child(bs);
    return f ? f : node_backing(bs);
}

static json_t *dirty_bitmaps_json(BlockNode *bs)
{
    GList *bitmaps = node_dirty_bitmaps(bs);
    if (!bitmaps) {
        return NULL;
    }
    json_t *arr = json_array();
    for (GList *l = bitmaps; l; l = l->next) {
        DirtyBitmap *bm = l->data;
        json_t *e = json_object();
        if (dirty_bitmap_name(bm)) {
            json_object_set_new(e, "name", json_string(dirty_bitmap_name(bm)));
        }
        json_object_set_new(e, "count", json_integer(dirty_bitmap_count(bm)));
        json_object_set_new(e, "granularity",
                            json_integer(dirty_bitmap_granularity(bm)));
        json_object_set_new(e, "recording",
                            json_boolean(dirty_bitmap_enabled(bm)));
        json_object_set_new(e, "busy", json_boolean(dirty_bitmap_busy(bm)));
        json_object_set_new(e, "persistent",
                            json_boolean(dirty_bitmap_persistent(bm)));
        if (dirty_bitmap_inconsistent(bm)) {
            json_object_set_new(e, "inconsistent", json_true());
        }
        json_array_append_new(arr, e);
    }
    return arr;
}

json_t *node_info_device_json(BlockNode *bs, bool flat, GError **errp)
{
    static const char *const throttle[] = {
        "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr",
    };
    json_t *info = json_object();
    int flags = node_get_flags(bs);

    json_object_set_new(info, "file", json_string_nocheck(node_get_filename(bs)));
    json_object_set_new(info, "node-name", json_string(node_get_name(bs)));
    json_object_set_new(info, "ro", json_boolean(node_is_read_only(bs)));
    json_object_set_new(info, "drv", json_string(node_get_format_name(bs)));
    if (node_backing(bs)) {
        json_object_set_new(info, "backing_file",
                            json_string_nocheck(
                                node_get_filename(node_backing(bs))));
    }
    json_object_set_new(info, "backing_file_depth", json_integer(0));
    json_object_set_new(info, "encrypted", json_boolean(node_is_encrypted(bs)));
    json_object_set_new(info, "detect_zeroes",
                        json_string(detect_zeroes_names[
                            node_get_detect_zeroes(bs)]));
    /* No throttling without a device: QEMU reports zeros. */
    for (size_t i = 0; i < G_N_ELEMENTS(throttle); i++) {
        json_object_set_new(info, throttle[i], json_integer(0));
    }

    /* The image, and unless flat its chain through filters and backings. */
    json_t *image = NULL, *last = NULL;
    int depth = 0;
    for (BlockNode *b = bs; b; ) {
        json_t *ii = image_info_json(b, errp);
        if (!ii) {
            json_decref(image);
            json_decref(info);
            return NULL;
        }
        if (last) {
            json_object_set_new(last, "backing-image", ii);
        } else {
            image = ii;
        }
        last = ii;
        if (flat || !filter_or_cow(b)) {
            break;
        }
        depth++;
        b = filter_or_cow(b);
    }
    json_object_set_new(info, "backing_file_depth", json_integer(depth));
    json_object_set_new(info, "image", image);

    json_t *cache = json_object();
    json_object_set_new(cache, "writeback", json_true());
    json_object_set_new(cache, "direct", json_boolean(flags & NODE_O_NOCACHE));
    json_object_set_new(cache, "no-flush",
                        json_boolean(flags & NODE_O_NO_FLUSH));
    json_object_set_new(info, "cache", cache);
    json_object_set_new(info, "write_threshold",
                        json_integer((json_int_t)node_get_write_threshold(bs)));
    json_t *bitmaps = dirty_bitmaps_json(bs);
    if (bitmaps) {
        json_object_set_new(info, "dirty-bitmaps", bitmaps);
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
