/*
 * qcow2 check: the snapshot table.  A check opens the image without
 * reading the table (a damaged table must not stop the check), so it is
 * read here from the header's pointer, with QEMU's limits checked before
 * anything is allocated.  With CHECK_FIX_ERRORS, what cannot be kept
 * (snapshots past the size limits, extra data past 1024 bytes) is dropped
 * and entries too short for a v3 image are completed, by writing the
 * table again once the refcounts are known to be right.
 */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "qcow2-check.h"

int coroutine_fn qcow2_check_read_snapshots(BlockNode *bs,
                                            BlockCheckResult *res, int fix)
{
    Qcow2State *s = bs->opaque;
    struct __attribute__((packed)) {
        uint32_t nb;
        uint64_t offset;
    } ptr;
    uint32_t dropped = 0, extra_dropped = 0;
    GError *err = NULL;
    int ret;

    qcow2_free_snapshots(s);
    s->snapshots_size = 0;
    ret = child_co_pread(bs->file, offsetof(Qcow2DiskHeader, nb_snapshots),
                         sizeof(ptr), &ptr, 0);
    if (ret < 0) {
        res->check_errors++;
        qcow2_check_report(s, "ERROR failed to read the snapshot table "
                           "pointer from the image header: %s",
                           g_strerror(-ret));
        s->nb_snapshots = 0;
        s->snapshots_offset = 0;
        return ret;
    }
    s->nb_snapshots = be32toh(ptr.nb);
    s->snapshots_offset = be64toh(ptr.offset);

    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS && (fix & CHECK_FIX_ERRORS)) {
        qcow2_check_report(s, "Discarding %" PRIu32 " overhanging snapshots",
                           s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        dropped += s->nb_snapshots - QCOW2_MAX_SNAPSHOTS;
        s->nb_snapshots = QCOW2_MAX_SNAPSHOTS;
    }

    /* QEMU's table validation: the count, then the offset. */
    const char *bad = NULL;
    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
        bad = "ERROR snapshot table too large";
        ret = -EFBIG;
    } else if ((uint64_t)INT64_MAX - (uint64_t)s->nb_snapshots *
               sizeof(Qcow2DiskSnapshot) < s->snapshots_offset ||
               qcow2_offset_into_cluster(s, s->snapshots_offset)) {
        bad = "ERROR snapshot table offset invalid";
        ret = -EINVAL;
    }
    if (bad) {
        res->check_errors++;
        qcow2_check_report_error(s, "%s", bad);
        if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
            qcow2_check_report(s, "You can force-remove all %" PRIu32 " "
                               "overhanging snapshots with qemu-img check -r "
                               "all", s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
        }
        s->nb_snapshots = 0;
        s->snapshots_offset = 0;
        return ret;
    }

    char *hint = NULL;
    ret = qcow2_read_snapshot_table_repair(bs, fix & CHECK_FIX_ERRORS,
                                           &dropped, &extra_dropped, &hint,
                                           &err);
    if (ret < 0) {
        res->check_errors++;
        qcow2_check_report_error(s, "ERROR failed to read the snapshot table: "
                                 "%s", err->message);
        g_error_free(err);
        if (hint) {
            qcow2_check_report(s, "%s", hint);
            g_free(hint);
        }
        s->nb_snapshots = 0;
        s->snapshots_offset = 0;
        return ret;
    }
    res->corruptions += dropped + extra_dropped;

    if (dropped) {
        /*
         * The header's count goes down now: the refcount check relies on
         * it matching s.  The dropped entries' clusters become leaks.
         */
        uint32_t nb = htobe32(s->nb_snapshots);
        ret = child_co_pwrite(bs->file,
                              offsetof(Qcow2DiskHeader, nb_snapshots),
                              sizeof(nb), &nb, 0);
        if (ret >= 0) {
            ret = node_co_flush(bs->file->bs);
        }
        if (ret < 0) {
            res->check_errors++;
            qcow2_check_report(s, "ERROR failed to update the snapshot count "
                               "in the image header: %s", g_strerror(-ret));
            return ret;
        }
        res->corruptions_fixed += dropped;
        res->corruptions -= dropped;
    }

    /* v3 entries carry at least the large VM state size and disk size. */
    if (s->version >= 3) {
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            if (s->snapshots[i].extra_size < 16) {
                res->corruptions++;
                qcow2_check_report(s, "%s snapshot table entry %" PRIu32 " is "
                                   "incomplete", (fix & CHECK_FIX_ERRORS)
                                   ? "Repairing" : "ERROR", i);
            }
        }
    }
    return 0;
}

int coroutine_fn qcow2_check_fix_snapshots(BlockNode *bs,
                                           BlockCheckResult *res, int fix)
{
    int ret;

    if (!res->corruptions || !(fix & CHECK_FIX_ERRORS)) {
        return 0;
    }
    ret = qcow2_write_snapshot_table(bs);
    if (ret >= 0) {
        ret = qcow2_cache_flush(((Qcow2State *)bs->opaque)->refcount_cache);
    }
    if (ret < 0) {
        res->check_errors++;
        qcow2_check_report(bs->opaque, "ERROR failed to update snapshot "
                           "table: %s", g_strerror(-ret));
        return ret;
    }
    res->corruptions_fixed += res->corruptions;
    res->corruptions = 0;
    return 0;
}
