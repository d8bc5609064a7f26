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

static void report(const char *prefix, GError *err)
{
    const char *prog = g_get_prgname();
    warn_print("%s: %s%s", prog ? prog : "qemu-img", prefix, err->message);
    g_error_free(err);
}

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
        fprintf(stderr, "ERROR failed to read the snapshot table pointer "
                "from the image header: %s\n", g_strerror(-ret));
        s->nb_snapshots = 0;
        s->snapshots_offset = 0;
        return ret;
    }
    s->nb_snapshots = be32toh(ptr.nb);
    s->snapshots_offset = be64toh(ptr.offset);

    if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS && (fix & CHECK_FIX_ERRORS)) {
        fprintf(stderr, "Discarding %" PRIu32 " overhanging snapshots\n",
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
        const char *prog = g_get_prgname();
        res->check_errors++;
        warn_print("%s: %s", prog ? prog : "qemu-img", bad);
        if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
            fprintf(stderr, "You can force-remove all %" PRIu32 " "
                    "overhanging snapshots with qemu-img check -r all\n",
                    s->nb_snapshots - QCOW2_MAX_SNAPSHOTS);
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
        report("ERROR failed to read the snapshot table: ", err);
        if (hint) {
            fprintf(stderr, "%s\n", hint);
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
            fprintf(stderr, "ERROR failed to update the snapshot count in "
                    "the image header: %s\n", g_strerror(-ret));
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
                fprintf(stderr, "%s snapshot table entry %" PRIu32 " is "
                        "incomplete\n", (fix & CHECK_FIX_ERRORS)
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
        fprintf(stderr, "ERROR failed to update snapshot table: %s\n",
                g_strerror(-ret));
        return ret;
    }
    res->corruptions_fixed += res->corruptions;
    res->corruptions = 0;
    return 0;
}
