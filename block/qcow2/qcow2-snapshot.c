/*
 * qcow2 internal snapshots: the snapshot table, and creating, applying and
 * deleting snapshots, byte-compatible with QEMU 7.2.
 *
 * A snapshot is a copy of the active L1 table plus one more reference on
 * every L2 table and data cluster it reaches; a cluster with more than one
 * reference loses its "copied" flag, so the next write to it copies it
 * first.  Every change follows the ordering rules of qcow2-refcount.c:
 * references are raised before a table that needs them is written, and
 * lowered only after the table that used them is gone, so a crash can leak
 * clusters but never free one that is in use.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qcow2.h"

#define SN_EXTRA_SIZE 24          /* what QEMU 7.2 writes */

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

int coroutine_fn qcow2_read_snapshot_table_repair(BlockNode *bs, bool repair,
                                                  uint32_t *nb_dropped,
                                                  uint32_t *extra_dropped,
                                                  char **hint, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t offset = s->snapshots_offset, table_length = 0;
    uint64_t end = offset;          /* of the last entry, without padding */
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

        ret = child_co_pread(bs->file, (int64_t)offset, sizeof(h), &h, 0);
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
            fprintf(stderr, "Discarding too much extra metadata in snapshot "
                    "table entry %" PRIu32 " (%" PRIu32 " > 1024)\n", i,
                    sn->extra_size);
            (*extra_dropped)++;
            sn->extra_size = 1024;
        }
        sn->extra = g_malloc0(MAX(sn->extra_size, SN_EXTRA_SIZE));
        ret = child_co_pread(bs->file, (int64_t)offset, sn->extra_size,
                             sn->extra, 0);
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
        ret = child_co_pread(bs->file, (int64_t)offset, id_len, sn->id_str,
                             0);
        if (ret >= 0) {
            ret = child_co_pread(bs->file, (int64_t)(offset + id_len),
                                 name_len, sn->name, 0);
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
            fprintf(stderr, "Discarding %" PRIu32 " overhanging snapshots "
                    "(snapshot table is too big)\n", s->nb_snapshots - i);
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
    return 0;

fail:
    error_setg_errno(errp, -ret, "Could not read snapshots");
out:
    qcow2_free_snapshots(s);
    return ret;
}

/* Serialise the table (entries in order, each padded to 8 bytes). */
static GByteArray *build_table(Qcow2State *s, uint32_t n,
                               const Qcow2Snapshot *sns)
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

        g_byte_array_append(b, (const uint8_t *)&h, sizeof(h));
        g_byte_array_append(b, extra, extra_size);
        g_byte_array_append(b, (const uint8_t *)sn->id_str,
                            (guint)strlen(sn->id_str));
        g_byte_array_append(b, (const uint8_t *)sn->name,
                            (guint)strlen(sn->name));
        g_byte_array_append(b, zero, (8 - b->len % 8) % 8);
        g_free(extra);
    }
    (void)s;
    return b;
}

/*
 * Write a new snapshot table of n entries into fresh clusters, switch the
 * header to it (count and offset in one write), then free the old one.
 */
static int coroutine_fn write_table(BlockNode *bs, uint32_t n,
                                    const Qcow2Snapshot *sns)
{
    Qcow2State *s = bs->opaque;
    GByteArray *b = build_table(s, n, sns);
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
        } h = { htobe32(n), htobe64(new_offset) };
        ret = child_co_pwrite(bs->file,
                              offsetof(Qcow2DiskHeader, nb_snapshots),
                              sizeof(h), &h, 0);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    if (ret < 0) {
        if (clusters) {
            qcow2_free_clusters(bs, new_offset,
                                clusters << s->cluster_bits,
                                QCOW2_DISCARD_NEVER);
        }
        g_byte_array_free(b, true);
        return ret;
    }
    uint64_t old_offset = s->snapshots_offset, old_size = s->snapshots_size;
    s->snapshots_offset = new_offset;
    s->snapshots_size = b->len;
    s->nb_snapshots = n;
    g_byte_array_free(b, true);
    if (old_size) {
        qcow2_free_clusters(bs, old_offset, old_size,
                            QCOW2_DISCARD_SNAPSHOT);
    }
    return 0;
}

int coroutine_fn qcow2_write_snapshot_table(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    return write_table(bs, s->nb_snapshots, s->snapshots);
}

/* The L1 table at offset (the active one comes from memory). */
static int coroutine_fn load_l1(BlockNode *bs, uint64_t offset,
                                uint32_t size, uint64_t **out)
{
    Qcow2State *s = bs->opaque;
    uint64_t *t = g_try_new0(uint64_t, MAX(size, 1));

    if (!t) {
        return -ENOMEM;
    }
    if (offset == s->l1_table_offset && size == s->l1_size) {
        memcpy(t, s->l1_table, (size_t)size * 8);
    } else if (size) {
        int ret = child_co_pread(bs->file, (int64_t)offset,
                                 (int64_t)size * 8, t, 0);
        if (ret < 0) {
            g_free(t);
            return ret;
        }
        for (uint32_t i = 0; i < size; i++) {
            t[i] = be64toh(t[i]);
        }
    }
    *out = t;
    return 0;
}

static int coroutine_fn change_entry_refcount(BlockNode *bs, uint64_t e,
                                              int addend)
{
    Qcow2State *s = bs->opaque;

    if (e & QCOW_OFLAG_COMPRESSED) {
        uint64_t coffset = e & s->cluster_offset_mask;
        uint64_t nb = ((e >> s->csize_shift) & s->csize_mask) + 1;
        uint64_t csize = nb * QCOW2_COMPRESSED_SECTOR_SIZE -
                         (coffset & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
        for (uint64_t c = coffset >> s->cluster_bits;
             c <= (coffset + csize - 1) >> s->cluster_bits; c++) {
            int ret = qcow2_update_cluster_refcount(bs, c, addend,
                                                    QCOW2_DISCARD_SNAPSHOT);
            if (ret < 0) {
                return ret;
            }
        }
        return 0;
    }
    uint64_t host = e & L2E_OFFSET_MASK;
    if (!host || qcow2_has_data_file(s)) {
        return 0;
    }
    return qcow2_update_cluster_refcount(bs, host >> s->cluster_bits, addend,
                                         QCOW2_DISCARD_SNAPSHOT);
}

/*
 * Add addend (+1, -1 or 0) to the references of everything the L1 table l1
 * reaches, and set the copied flags of its L2 entries and (in l1) of its
 * L1 entries from the resulting refcounts.  QEMU's
 * qcow2_update_snapshot_refcount, on a table in memory.
 */
static int coroutine_fn update_table(BlockNode *bs, uint64_t *l1,
                                     uint32_t l1_size, int addend,
                                     bool *l1_changed)
{
    Qcow2State *s = bs->opaque;
    int ret = 0;

    for (uint32_t i = 0; i < l1_size && ret >= 0; i++) {
        uint64_t l2_offset = l1[i] & L1E_OFFSET_MASK, rc;
        void *l2;

        if (!l2_offset) {
            continue;
        }
        if (qcow2_offset_into_cluster(s, l2_offset)) {
            ret = -EIO;
            break;
        }
        ret = qcow2_cache_get(s->l2_cache, l2_offset, &l2);
        if (ret < 0) {
            break;
        }
        for (uint64_t j = 0; j < s->l2_size && ret >= 0; j++) {
            uint64_t e = qcow2_l2_entry(s, l2, (unsigned)j), ne;

            if (addend) {
                ret = change_entry_refcount(bs, e, addend);
                if (ret < 0) {
                    break;
                }
            }
            uint64_t host = e & L2E_OFFSET_MASK;
            if ((e & QCOW_OFLAG_COMPRESSED) || !host ||
                qcow2_has_data_file(s)) {
                continue;
            }
            ret = qcow2_get_refcount(bs, host >> s->cluster_bits, &rc);
            if (ret < 0) {
                break;
            }
            ne = rc == 1 ? e | QCOW_OFLAG_COPIED : e & ~QCOW_OFLAG_COPIED;
            if (ne != e) {
                qcow2_set_l2_entry(s, l2, (unsigned)j, ne);
                qcow2_cache_mark_dirty(s->l2_cache, l2);
            }
        }
        qcow2_cache_put(s->l2_cache, &l2);
        if (ret < 0) {
            break;
        }
        if (addend) {
            /* A table that loses its last user must leave the cache. */
            if (addend < 0) {
                ret = qcow2_cache_flush(s->l2_cache);
                if (ret < 0) {
                    break;
                }
            }
            ret = qcow2_update_cluster_refcount(bs,
                                                l2_offset >> s->cluster_bits,
                                                addend,
                                                QCOW2_DISCARD_SNAPSHOT);
            if (ret < 0) {
                break;
            }
        }
        ret = qcow2_get_refcount(bs, l2_offset >> s->cluster_bits, &rc);
        if (ret < 0) {
            break;
        }
        uint64_t nl1 = rc == 1 ? l1[i] | QCOW_OFLAG_COPIED
                               : l1[i] & ~QCOW_OFLAG_COPIED;
        if (nl1 != l1[i]) {
            l1[i] = nl1;
            *l1_changed = true;
        }
    }
    /* The tables' new flags reach the disk before we go on. */
    if (ret >= 0) {
        ret = qcow2_cache_flush(s->l2_cache);
    }
    return ret;
}

/* The same for the L1 table at l1_offset, which is written back. */
static int coroutine_fn update_refcounts(BlockNode *bs, uint64_t l1_offset,
                                         uint32_t l1_size, int addend)
{
    Qcow2State *s = bs->opaque;
    bool active = l1_offset == s->l1_table_offset;
    bool changed = false;
    uint64_t *l1;
    int ret = load_l1(bs, l1_offset, l1_size, &l1);

    if (ret < 0) {
        return ret;
    }
    ret = update_table(bs, l1, l1_size, addend, &changed);
    if (ret >= 0 && changed) {
        uint64_t *be = g_new(uint64_t, MAX(l1_size, 1));
        for (uint32_t i = 0; i < l1_size; i++) {
            be[i] = htobe64(l1[i]);
        }
        ret = child_co_pwrite(bs->file, (int64_t)l1_offset,
                              (int64_t)l1_size * 8, be, 0);
        g_free(be);
        if (ret >= 0 && active) {
            memcpy(s->l1_table, l1, (size_t)l1_size * 8);
        }
    }
    g_free(l1);
    return ret;
}

static int find_by_id(Qcow2State *s, const char *id)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (!strcmp(s->snapshots[i].id_str, id)) {
            return (int)i;
        }
    }
    return -1;
}

static int find_by_name(Qcow2State *s, const char *name)
{
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (!strcmp(s->snapshots[i].name, name)) {
            return (int)i;
        }
    }
    return -1;
}

static int coroutine_fn do_create(BlockNode *bs, const SnapshotInfo *info,
                                  GError **errp)
{
    Qcow2State *s = bs->opaque;
    char id[16];
    uint64_t l1_offset = 0, l1_bytes = (uint64_t)s->l1_size * 8;
    int ret;

    if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS) {
        error_setg(errp, "Too many snapshots");
        return -EFBIG;
    }
    if (qcow2_has_data_file(s)) {
        error_setg(errp, "Internal snapshots are not supported with an "
                   "external data file");
        return -ENOTSUP;
    }
    if (info->id_str[0]) {
        if (find_by_id(s, info->id_str) >= 0) {
            error_setg(errp, "Snapshot with ID '%s' already exists",
                       info->id_str);
            return -EEXIST;
        }
        g_strlcpy(id, info->id_str, sizeof(id));
    } else {
        /* The next number after the largest numeric ID. */
        unsigned long max = 0;
        for (uint32_t i = 0; i < s->nb_snapshots; i++) {
            unsigned long v = strtoul(s->snapshots[i].id_str, NULL, 10);
            max = MAX(max, v);
        }
        g_snprintf(id, sizeof(id), "%lu", max + 1);
    }

    /* The copy of the active L1 table. */
    if (l1_bytes) {
        ret = qcow2_alloc_clusters(bs, qcow2_size_to_clusters(s, l1_bytes),
                                   &l1_offset);
        if (ret < 0) {
            goto fail;
        }
        uint64_t *be = g_new(uint64_t, s->l1_size);
        for (uint32_t i = 0; i < s->l1_size; i++) {
            be[i] = htobe64(s->l1_table[i]);
        }
        ret = qcow2_cache_flush(s->refcount_cache);
        if (ret >= 0) {
            ret = qcow2_check_overlap(bs, 0, l1_offset, l1_bytes);
        }
        if (ret >= 0) {
            ret = child_co_pwrite(bs->file, (int64_t)l1_offset,
                                  (int64_t)l1_bytes, be, 0);
        }
        g_free(be);
        if (ret < 0) {
            goto fail;
        }
    }
    /* One more reference on everything the active image reaches. */
    ret = update_refcounts(bs, s->l1_table_offset, s->l1_size, 1);
    if (ret < 0) {
        goto fail;
    }

    Qcow2Snapshot *sns = g_new0(Qcow2Snapshot, s->nb_snapshots + 1);
    if (s->nb_snapshots) {
        memcpy(sns, s->snapshots, s->nb_snapshots * sizeof(*sns));
    }
    Qcow2Snapshot *sn = &sns[s->nb_snapshots];
    sn->id_str = g_strdup(id);
    sn->name = g_strdup(info->name);
    sn->l1_table_offset = l1_offset;
    sn->l1_size = s->l1_size;
    sn->date_sec = info->date_sec;
    sn->date_nsec = info->date_nsec;
    sn->vm_clock_nsec = info->vm_clock_nsec;
    sn->vm_state_size = info->vm_state_size;
    sn->disk_size = s->size;
    sn->icount = info->icount;
    sn->extra_size = SN_EXTRA_SIZE;
    ret = write_table(bs, s->nb_snapshots + 1, sns);
    if (ret < 0) {
        g_free(sn->id_str);
        g_free(sn->name);
        g_free(sns);
        /* The references stay: leaked clusters, which check -r repairs. */
        error_setg_errno(errp, -ret, "Could not write the snapshot table");
        return ret;
    }
    g_free(s->snapshots);
    s->snapshots = sns;
    return qcow2_cache_flush(s->refcount_cache);

fail:
    if (l1_offset) {
        qcow2_free_clusters(bs, l1_offset, l1_bytes, QCOW2_DISCARD_NEVER);
    }
    error_setg_errno(errp, -ret, "Could not create the snapshot");
    return ret;
}

static int coroutine_fn do_goto(BlockNode *bs, const char *id_or_name,
                                GError **errp)
{
    Qcow2State *s = bs->opaque;
    int i = find_by_id(s, id_or_name);
    uint64_t *sn_l1;
    int ret;

    if (i < 0) {
        i = find_by_name(s, id_or_name);
    }
    if (i < 0) {
        error_setg_errno(errp, ENOENT, "Failed to load snapshot");
        return -ENOENT;
    }
    Qcow2Snapshot *sn = &s->snapshots[i];
    if (sn->bad_l1) {
        error_setg(errp, "Snapshot L1 table offset invalid");
        return -EFBIG;
    }
    if (sn->disk_size != s->size) {
        error_setg(errp, "qcow2: Loading snapshots with a different disk "
                   "size is not supported by strata yet");
        return -ENOTSUP;
    }
    if (sn->l1_size > s->l1_size) {
        ret = qcow2_grow_l1(bs, sn->l1_size);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to grow the L1 table");
            return ret;
        }
    }
    ret = load_l1(bs, sn->l1_table_offset, sn->l1_size, &sn_l1);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to load snapshot");
        return ret;
    }
    /* The snapshot's clusters gain the active image as a user... */
    ret = update_refcounts(bs, sn->l1_table_offset, sn->l1_size, 1);
    if (ret < 0) {
        goto out;
    }
    ret = qcow2_cache_flush(s->refcount_cache);
    if (ret < 0) {
        goto out;
    }
    /* ...then the active L1 table becomes the snapshot's... */
    uint64_t *be = g_new0(uint64_t, s->l1_size);
    for (uint32_t k = 0; k < sn->l1_size; k++) {
        be[k] = htobe64(sn_l1[k]);
    }
    child_debug_event(bs->file, BLKDBG_L1_UPDATE);
    ret = qcow2_check_overlap(bs, QCOW2_OL_ACTIVE_L1, s->l1_table_offset,
                              (uint64_t)s->l1_size * 8);
    if (ret >= 0) {
        ret = child_co_pwrite(bs->file, (int64_t)s->l1_table_offset,
                              (int64_t)s->l1_size * 8, be, 0);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    g_free(be);
    if (ret < 0) {
        goto out;
    }
    /*
     * ...and what the old active table reached loses a user.  The old
     * table is still in memory (s->l1_table); the new one is on disk.
     */
    uint64_t *old = g_memdup2(s->l1_table, (size_t)s->l1_size * 8);
    uint32_t old_size = s->l1_size;
    for (uint32_t k = 0; k < s->l1_size; k++) {
        s->l1_table[k] = k < sn->l1_size ? sn_l1[k] : 0;
    }
    {
        /* The old table is gone from disk: only its references change. */
        bool changed = false;
        ret = update_table(bs, old, old_size, -1, &changed);
    }
    g_free(old);
    if (ret >= 0) {
        ret = update_refcounts(bs, s->l1_table_offset, s->l1_size, 0);
    }
out:
    g_free(sn_l1);
    if (ret < 0 && errp && !*errp) {
        error_setg_errno(errp, -ret, "Failed to load snapshot");
    }
    return ret;
}

static int coroutine_fn do_delete(BlockNode *bs, const char *id,
                                  const char *name, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int i = -1;
    int ret;

    for (uint32_t k = 0; k < s->nb_snapshots && i < 0; k++) {
        if ((!id || !strcmp(s->snapshots[k].id_str, id)) &&
            (!name || !strcmp(s->snapshots[k].name, name))) {
            i = (int)k;
        }
    }
    if (i < 0) {
        error_setg(errp, "Can't find the snapshot");
        return -ENOENT;
    }
    Qcow2Snapshot sn = s->snapshots[i];
    if (sn.bad_l1) {
        error_setg(errp, "Snapshot L1 table offset invalid");
        return -EFBIG;
    }
    /* First the table without it, so nothing points at what goes. */
    Qcow2Snapshot *sns = g_new0(Qcow2Snapshot, MAX(s->nb_snapshots, 1));
    uint32_t n = 0;
    for (uint32_t k = 0; k < s->nb_snapshots; k++) {
        if ((int)k != i) {
            sns[n++] = s->snapshots[k];
        }
    }
    ret = write_table(bs, n, sns);
    if (ret < 0) {
        g_free(sns);
        error_setg_errno(errp, -ret, "Failed to remove snapshot from "
                         "snapshot list");
        return ret;
    }
    g_free(s->snapshots);
    s->snapshots = sns;

    /* Then its references (leaks on failure, which check -r repairs). */
    ret = update_refcounts(bs, sn.l1_table_offset, sn.l1_size, -1);
    if (ret >= 0 && sn.l1_size) {
        ret = qcow2_free_clusters(bs, sn.l1_table_offset,
                                  (uint64_t)sn.l1_size * 8,
                                  QCOW2_DISCARD_SNAPSHOT);
    }
    if (ret >= 0) {
        ret = update_refcounts(bs, s->l1_table_offset, s->l1_size, 0);
    }
    if (ret >= 0) {
        ret = qcow2_cache_flush(s->refcount_cache);
    }
    g_free(sn.id_str);
    g_free(sn.name);
    g_free(sn.extra);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to free the cluster and L1 "
                         "table");
    }
    return ret;
}

/* ---- Driver entry points ---- */

int coroutine_fn qcow2_snapshot_create(BlockNode *bs, SnapshotInfo *info,
                                       GError **errp)
{
    Qcow2State *s = bs->opaque;
    int ret;

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    ret = do_create(bs, info, errp);
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_snapshot_goto(BlockNode *bs, const char *id_or_name,
                                     GError **errp)
{
    Qcow2State *s = bs->opaque;
    int ret;

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    ret = do_goto(bs, id_or_name, errp);
    co_mutex_unlock(&s->lock);
    return ret;
}

int coroutine_fn qcow2_snapshot_delete(BlockNode *bs, const char *id,
                                       const char *name, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int ret;

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    ret = do_delete(bs, id, name, errp);
    co_mutex_unlock(&s->lock);
    return ret;
}

int qcow2_snapshot_list(BlockNode *bs, SnapshotInfo **list)
{
    Qcow2State *s = bs->opaque;
    SnapshotInfo *l = g_new0(SnapshotInfo, MAX(s->nb_snapshots, 1));

    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        const Qcow2Snapshot *sn = &s->snapshots[i];
        g_strlcpy(l[i].id_str, sn->id_str, sizeof(l[i].id_str));
        g_strlcpy(l[i].name, sn->name, sizeof(l[i].name));
        l[i].vm_state_size = sn->vm_state_size;
        l[i].date_sec = sn->date_sec;
        l[i].date_nsec = sn->date_nsec;
        l[i].vm_clock_nsec = sn->vm_clock_nsec;
        l[i].icount = sn->icount;
    }
    *list = l;
    return (int)s->nb_snapshots;
}

int coroutine_fn qcow2_snapshot_load_tmp(BlockNode *bs, const char *id,
                                         const char *name, GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t *l1;
    int i = -1, ret;

    if (!bs->read_only) {
        error_setg(errp, "Device is not readonly");
        return -EINVAL;
    }
    for (uint32_t k = 0; k < s->nb_snapshots && i < 0; k++) {
        if ((!id || !strcmp(s->snapshots[k].id_str, id)) &&
            (!name || !strcmp(s->snapshots[k].name, name))) {
            i = (int)k;
        }
    }
    if (i < 0) {
        error_setg(errp, "Can't find snapshot");
        return -ENOENT;
    }
    Qcow2Snapshot *sn = &s->snapshots[i];
    if (sn->bad_l1) {
        error_setg(errp, "Snapshot L1 table offset invalid");
        return -EFBIG;
    }
    co_mutex_lock(&s->lock);
    ret = load_l1(bs, sn->l1_table_offset, sn->l1_size, &l1);
    if (ret >= 0) {
        g_free(s->l1_table);
        s->l1_table = l1;
        s->l1_size = sn->l1_size;
        s->l1_alloc = MAX(sn->l1_size, 1);
        s->l1_table_offset = sn->l1_table_offset;
    }
    co_mutex_unlock(&s->lock);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the snapshot's L1 "
                         "table");
    }
    return ret;
}
