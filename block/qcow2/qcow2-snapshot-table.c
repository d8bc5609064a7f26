/*
 * The qcow2 snapshot table: reading it (with check's repair of oversized
 * entries and tables), serialising it as QEMU 7.2 lays it out, and writing
 * it in a metadata transaction or, for check's repair, by itself.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qcow2.h"
#include "qcow2-snapshot-int.h"


void qcow2_free_snapshots(Qcow2State *s)
{
    for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
        g_free(s->snapshots[i].id_str);
        g_free(s->snapshots[i].name);
        g_free(s->snapshots[i].extra);
    }
    g_free(s->snapshots);
    s->snapshots = NULL;
}

int coroutine_fn qcow2_read_snapshot_table(BlockNode *bs, GError **errp)
{
    char *hint = NULL;
    int ret = qcow2_read_snapshot_table_repair(bs, false, NULL, NULL, &hint,
                                               errp);

    /* QEMU prints the hint on the line after the error. */
    if (hint && errp && *errp) {
        char *msg = g_strdup_printf("%s\n%s", (*errp)->message, hint);
        g_free((*errp)->message);
        (*errp)->message = msg;
    }
    g_free(hint);
    return ret;
}

/*
 * The table is read through a window of SN_WINDOW bytes: an entry is a few
 * small fields, and a damaged header may claim 65536 entries (check -r all
 * reads them all), each of which was four reads from the file.  A window
 * that cannot be read (an error injected past the table, say) leaves the
 * field to a read of its own, as before.
 */
#define SN_WINDOW (64 * 1024)

typedef struct SnWindow {
    uint8_t *buf;
    uint64_t start, len;
} SnWindow;

static int coroutine_fn sn_read(BlockNode *bs, SnWindow *w, uint64_t offset,
                                size_t bytes, void *dst)
{
    if (bytes && bytes <= SN_WINDOW && offset <= INT64_MAX - SN_WINDOW) {
        if (!w->buf || offset < w->start ||
            offset + bytes > w->start + w->len) {
            w->buf = w->buf ? w->buf : g_malloc(SN_WINDOW);
            w->len = 0;
            if (child_co_pread(bs->file, (int64_t)offset, SN_WINDOW, w->buf,
                               0) >= 0) {
                w->start = offset;
                w->len = SN_WINDOW;
            }
        }
        if (w->len) {
            memcpy(dst, w->buf + (offset - w->start), bytes);
            return 0;
        }
    }
    return child_co_pread(bs->file, (int64_t)offset, (int64_t)bytes, dst, 0);
}

int coroutine_fn qcow2_read_snapshot_table_repair(BlockNode *bs, bool repair,
                                                  uint32_t *nb_dropped,
                                                  uint32_t *extra_dropped,
                                                  char **hint, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t offset = s->snapshots_offset, table_length = 0;
    uint64_t end = offset;          /* of the last entry, without padding */
    SnWindow win = { 0 };
    int ret;

    s->snapshots_size = 0;
    if (!s->nb_snapshots) {
        return 0;
    }
    s->snapshots = g_new0(Qcow2Snapshot, s->nb_snapshots);
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        Qcow2DiskSnapshot h;
        uint64_t end_before = end;

        /* Entries start 8-aligned; the last one is not padded. */
        offset = ROUND_UP(offset, 8);
        ret = sn_read(bs, &win, offset, sizeof(h), &h);
        if (ret < 0) {
            goto fail;
        }
        offset += sizeof(h);
        sn->l1_table_offset = be64toh(h.l1_table_offset);
        sn->l1_size = be32toh(h.l1_size);
        sn->date_sec = be32toh(h.date_sec);
        sn->date_nsec = be32toh(h.date_nsec);
        sn->vm_clock_nsec = be64toh(h.vm_clock_nsec);
        sn->vm_state_size = be32toh(h.vm_state_size);
        sn->extra_size = be32toh(h.extra_data_size);
        sn->icount = UINT64_MAX;
        uint64_t extra_on_disk = sn->extra_size;
        if (sn->extra_size > 1024) {
            if (!repair) {
                error_setg(errp, "Too much extra metadata in snapshot table "
                           "entry %" PRIu32, i);
                if (hint) {
                    *hint = g_strdup("You can force-remove this extra "
                                     "metadata with qemu-img check -r all");
                }
                ret = -EFBIG;
                goto out;
            }
            /* check -r all: keep the first 1024 bytes only. */
            qcow2_check_report(s, "Discarding too much extra metadata in "
                               "snapshot table entry %" PRIu32 " (%" PRIu32 " "
                               "> 1024)", i, sn->extra_size);
            (*extra_dropped)++;
            sn->extra_size = 1024;
        }
        sn->extra = g_malloc0(MAX(sn->extra_size, SN_EXTRA_SIZE));
        ret = sn_read(bs, &win, offset, sn->extra_size, sn->extra);
        if (ret < 0) {
            goto fail;
        }
        offset += extra_on_disk;
        Qcow2DiskSnapshotExtra *x = (Qcow2DiskSnapshotExtra *)sn->extra;
        if (sn->extra_size >= 8) {
            sn->vm_state_size = be64toh(x->vm_state_size_large);
        }
        sn->disk_size = sn->extra_size >= 16 ? be64toh(x->disk_size) : s->size;
        if (sn->extra_size >= 24) {
            sn->icount = be64toh(x->icount);
        }

        uint16_t id_len = be16toh(h.id_str_size);
        uint16_t name_len = be16toh(h.name_size);
        sn->id_str = g_malloc0(id_len + 1u);
        sn->name = g_malloc0(name_len + 1u);
        ret = sn_read(bs, &win, offset, id_len, sn->id_str);
        if (ret >= 0) {
            ret = sn_read(bs, &win, offset + id_len, name_len, sn->name);
        }
        if (ret < 0) {
            goto fail;
        }
        /*
         * QEMU's limits: the table as it will be written (extra data cut
         * to 1024 bytes) and the bytes read.
         */
        table_length = ROUND_UP(table_length, 8) + sizeof(h) +
                       sn->extra_size + id_len + name_len;
        end = offset + id_len + name_len;
        offset = ROUND_UP(end, 8);
        if (table_length > QCOW2_MAX_SNAPSHOTS * 1024ull ||
            offset - s->snapshots_offset > INT32_MAX) {
            if (!repair) {
                error_setg(errp, "Snapshot table is too big");
                if (hint) {
                    *hint = g_strdup_printf("You can force-remove all %" PRIu32
                                            " overhanging snapshots with "
                                            "qemu-img check -r all",
                                            s->nb_snapshots - i);
                }
                ret = -EFBIG;
                goto out;
            }
            qcow2_check_report(s, "Discarding %" PRIu32 " overhanging "
                               "snapshots (snapshot table is too big)",
                               s->nb_snapshots - i);
            *nb_dropped += s->nb_snapshots - i;
            for (uint32_t k = i; k < s->nb_snapshots; k++) {
                g_free(s->snapshots[k].id_str);
                g_free(s->snapshots[k].name);
                g_free(s->snapshots[k].extra);
            }
            s->nb_snapshots = i;
            end = end_before;
            break;
        }
        if (qcow2_offset_into_cluster(s, sn->l1_table_offset) ||
            (uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
            /* Not fatal here: check reports it; goto/delete refuse it. */
            sn->bad_l1 = true;
        }
    }
    /* As QEMU counts it: the last entry's padding is not part of it. */
    s->snapshots_size = end - s->snapshots_offset;
    g_free(win.buf);
    return 0;

fail:
    error_setg_errno(errp, -ret, "Could not read snapshots");
out:
    g_free(win.buf);
    qcow2_free_snapshots(s);
    return ret;
}

/*
 * Serialise the table as QEMU lays it out: each entry starts on an 8-byte
 * boundary, and the table ends where its last entry ends (no padding).
 */
GByteArray *qcow2_snapshot_table_build(uint32_t n, const Qcow2Snapshot *sns)
{
    GByteArray *b = g_byte_array_new();
    static const uint8_t zero[8];

    for (uint32_t i = 0; i < n; i++) {
        const Qcow2Snapshot *sn = &sns[i];
        uint32_t extra_size = MAX(sn->extra_size, SN_EXTRA_SIZE);
        uint8_t *extra = g_malloc0(extra_size);
        Qcow2DiskSnapshot h = {
            .l1_table_offset = htobe64(sn->l1_table_offset),
            .l1_size = htobe32(sn->l1_size),
            .id_str_size = htobe16((uint16_t)strlen(sn->id_str)),
            .name_size = htobe16((uint16_t)strlen(sn->name)),
            .date_sec = htobe32(sn->date_sec),
            .date_nsec = htobe32(sn->date_nsec),
            .vm_clock_nsec = htobe64(sn->vm_clock_nsec),
            .vm_state_size = htobe32(sn->vm_state_size > UINT32_MAX
                                     ? 0 : (uint32_t)sn->vm_state_size),
            .extra_data_size = htobe32(extra_size),
        };
        if (sn->extra) {
            memcpy(extra, sn->extra, sn->extra_size);
        }
        Qcow2DiskSnapshotExtra *x = (Qcow2DiskSnapshotExtra *)extra;
        x->vm_state_size_large = htobe64(sn->vm_state_size);
        x->disk_size = htobe64(sn->disk_size);
        x->icount = htobe64(sn->icount);

        g_byte_array_append(b, zero, (8 - b->len % 8) % 8);
        g_byte_array_append(b, (const uint8_t *)&h, sizeof(h));
        g_byte_array_append(b, extra, extra_size);
        g_byte_array_append(b, (const uint8_t *)sn->id_str,
                            (guint)strlen(sn->id_str));
        g_byte_array_append(b, (const uint8_t *)sn->name,
                            (guint)strlen(sn->name));
        g_free(extra);
    }
    return b;
}

/*
 * The new snapshot table (n entries) in fresh clusters of the
 * transaction; the old one is freed in the new view.
 */
int coroutine_fn qcow2_snapshot_table_txn_write(BlockNode *bs,
                                                Qcow2MetaTxn *t, uint32_t n,
                                                const Qcow2Snapshot *sns,
                                                uint64_t *offset,
                                                uint64_t *size)
{
    Qcow2State *s = bs->opaque;
    GByteArray *b = qcow2_snapshot_table_build(n, sns);
    int ret = qcow2_txn_free_range(t, s->snapshots_offset, s->snapshots_size);

    *offset = 0;
    *size = b->len;
    if (ret >= 0 && b->len) {
        ret = qcow2_txn_alloc(t, qcow2_size_to_clusters(s, b->len), offset);
        if (ret >= 0) {
            qcow2_txn_queue_write(t, *offset, g_byte_array_steal(b, NULL),
                                  *size);
        }
    }
    g_byte_array_free(b, true);
    return ret;
}

/*
 * Rewrite the snapshot table from memory (check's repair drops entries), as
 * QEMU does it so that the repaired file is laid out as QEMU's: a new table
 * in fresh clusters, the header's count and offset switched in one write,
 * then the old table freed.  A crash leaves the old or the new table and at
 * worst leaked clusters; no refcount or L2 entry changes meaning here.
 */
int coroutine_fn qcow2_write_snapshot_table(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    GByteArray *b = qcow2_snapshot_table_build(s->nb_snapshots, s->snapshots);
    uint64_t new_offset = 0, clusters = 0;
    int ret = 0;

    if (b->len) {
        clusters = qcow2_size_to_clusters(s, b->len);
        ret = qcow2_alloc_clusters(bs, clusters, &new_offset);
        if (ret >= 0) {
            ret = qcow2_cache_flush(s->refcount_cache);
        }
        if (ret >= 0) {
            ret = qcow2_check_overlap(bs, 0, new_offset, b->len);
        }
        if (ret >= 0) {
            ret = child_co_pwrite(bs->file, (int64_t)new_offset, b->len,
                                  b->data, 0);
        }
        if (ret >= 0) {
            ret = node_co_flush(bs->file->bs);
        }
    }
    if (ret >= 0) {
        struct __attribute__((packed)) {
            uint32_t nb;
            uint64_t offset;
        } h = { htobe32(s->nb_snapshots), htobe64(new_offset) };
        ret = child_co_pwrite(bs->file,
                              offsetof(Qcow2DiskHeader, nb_snapshots),
                              sizeof(h), &h, 0);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        if (clusters) {
            qcow2_free_clusters(bs, new_offset, clusters << s->cluster_bits,
                                QCOW2_DISCARD_NEVER);
        }
        g_byte_array_free(b, true);
        return ret;
    }
    uint64_t old_offset = s->snapshots_offset, old_size = s->snapshots_size;
    s->snapshots_offset = new_offset;
    s->snapshots_size = b->len;
    g_byte_array_free(b, true);
    if (old_size) {
        qcow2_free_clusters(bs, old_offset, old_size, QCOW2_DISCARD_SNAPSHOT);
    }
    return 0;
}
