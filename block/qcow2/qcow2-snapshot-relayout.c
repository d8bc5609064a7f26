/*
 * Phase 2 of a qcow2 snapshot operation (qcow2-snapshot.c): QEMU's layout.
 *
 * Phase 1 (the operation's own transaction) builds every table it changes
 * as a copy past the end of the file and switches to it, so the tables it
 * replaced (L2 tables, active L1 table, refcount blocks and table) become
 * free, and the places where QEMU puts new tables (a snapshot's L1 table,
 * the snapshot table) are left free.  Phase 2 is a second transaction
 * from that committed view: it writes each copy back to the place QEMU
 * has it (the replaced table's, or the new table's), all free in the
 * committed view, switches the header again, and cuts the file back to
 * QEMU's length, which drops the phase-1 copies.  A crash in phase 2
 * leaves the phase-1 view (QEMU's contents at other places); after it,
 * QEMU's file.
 *
 * One place may be in use: on apply, a snapshot's own L2 table that the
 * active table shares, whose copy differs only in COPIED flags (QEMU
 * rewrites that table in place).  Only the snapshot uses it in the
 * committed view and check reads no COPIED flag of a table the active L1
 * table does not reach, so either version of each entry is consistent.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "qcow2.h"
#include "qcow2-snapshot-int.h"

/* The file's length in bytes (the node's is cached, in sectors). */
static int64_t file_length(BlockNode *bs)
{
    BlockNode *f = bs->file->bs;

    return f->drv->getlength ? f->drv->getlength(f) : -ENOTSUP;
}

void qcow2_relayout_init(BlockNode *bs, Qcow2Relayout *r)
{
    Qcow2State *s = bs->opaque;

    memset(r, 0, sizeof(*r));
    r->rt = g_memdup2(s->refcount_table,
                      (size_t)MAX(s->refcount_table_size, 1) * 8);
    r->rt_size = s->refcount_table_size;
    r->rt_offset = s->refcount_table_offset;
    r->file_len = file_length(bs);
    r->sn_index = -1;
    r->applied = -1;
}

void qcow2_relayout_clear(Qcow2Relayout *r)
{
    g_free(r->rt);
    g_free(r->l2_orig);
    g_free(r->lowered);
}

/* Phase-1 copies from here on: past the file's end and QEMU's places. */
void qcow2_relayout_floor(BlockNode *bs, Qcow2MetaTxn *t, Qcow2Relayout *r,
                          uint64_t end)
{
    Qcow2State *s = bs->opaque;

    if (r->file_len >= 0) {
        end = MAX(end, (uint64_t)r->file_len);
    }
    qcow2_txn_set_floor(t, qcow2_size_to_clusters(s, end));
}

/* Refcount rc for the clusters of [offset, offset + bytes), all free. */
static int coroutine_fn take_range(Qcow2MetaTxn *t, Qcow2State *s,
                                   uint64_t offset, uint64_t bytes)
{
    for (uint64_t c = offset >> s->cluster_bits;
         bytes && c <= (offset + bytes - 1) >> s->cluster_bits; c++) {
        int ret = qcow2_txn_take(t, c, 1);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}

/*
 * The L2 table copy at c goes back to o: free in the committed view, or
 * (apply) a table only snapshots use that differs from c in COPIED flags.
 */
static int coroutine_fn move_l2(BlockNode *bs, Qcow2MetaTxn *t,
                                GHashTable *active, uint64_t c, uint64_t o)
{
    Qcow2State *s = bs->opaque;
    uint8_t *buf = g_malloc(s->cluster_size), *old = NULL;
    uint64_t rc, orc;
    int ign = 0;
    int ret = qcow2_txn_get_refcount(t, c >> s->cluster_bits, &rc);

    if (ret >= 0) {
        ret = child_co_pread(bs->file, (int64_t)c, s->cluster_size, buf, 0);
    }
    if (ret >= 0) {
        ret = qcow2_get_refcount(bs, o >> s->cluster_bits, &orc);
    }
    if (ret >= 0 && orc == 0) {
        ret = qcow2_txn_take(t, o >> s->cluster_bits, (int)rc);
    } else if (ret >= 0) {
        ret = -ENOTSUP;
        if (!g_hash_table_contains(active, &o)) {
            old = g_malloc(s->cluster_size);
            ret = child_co_pread(bs->file, (int64_t)o, s->cluster_size, old,
                                 0);
        }
        for (uint64_t j = 0; old && ret >= 0 && j < s->l2_size; j++) {
            uint64_t e = qcow2_l2_entry(s, buf, (unsigned)j);
            if ((e ^ qcow2_l2_entry(s, old, (unsigned)j)) &
                ~QCOW_OFLAG_COPIED) {
                ret = -ENOTSUP;
            }
            qcow2_set_l2_entry(s, old, (unsigned)j, e);
        }
        if (ret >= 0 && memcmp(old, buf, s->cluster_size)) {
            ret = -ENOTSUP;
        }
        if (ret >= 0) {
            ret = qcow2_txn_add(t, o >> s->cluster_bits, (int)rc);
            ign = QCOW2_OL_INACTIVE_L2;
        }
    }
    if (ret >= 0) {
        ret = qcow2_txn_add(t, c >> s->cluster_bits, -(int)rc);
    }
    if (ret >= 0) {
        qcow2_txn_queue_write_ign(t, o, buf, s->cluster_size, ign);
        buf = NULL;
    }
    g_free(buf);
    g_free(old);
    return ret;
}

/*
 * QEMU's flags in a table that only snapshots use: it recomputes them from
 * the new refcounts when it lowers the table's references.  Written in
 * place, which is safe for the same reason as in move_l2.
 */
static int coroutine_fn refresh_flags(BlockNode *bs, Qcow2MetaTxn *t,
                                      GHashTable *done, uint64_t x)
{
    Qcow2State *s = bs->opaque;
    uint8_t *buf;
    bool changed = false;
    uint64_t rc;
    int ret;

    if (!x || g_hash_table_contains(done, &x)) {
        return 0;
    }
    g_hash_table_add(done, g_memdup2(&x, 8));
    ret = qcow2_txn_get_refcount(t, x >> s->cluster_bits, &rc);
    if (ret < 0 || rc == 0) {
        return ret;
    }
    buf = g_malloc(s->cluster_size);
    ret = child_co_pread(bs->file, (int64_t)x, s->cluster_size, buf, 0);
    for (uint64_t j = 0; ret >= 0 && j < s->l2_size; j++) {
        uint64_t e = qcow2_l2_entry(s, buf, (unsigned)j);
        uint64_t host = e & L2E_OFFSET_MASK, ne = e & ~QCOW_OFLAG_COPIED;

        rc = 0;
        if (!(e & QCOW_OFLAG_COMPRESSED) && host) {
            rc = 1;
            if (!qcow2_has_data_file(s)) {
                ret = qcow2_txn_get_refcount(t, host >> s->cluster_bits,
                                             &rc);
            }
        }
        if (rc == 1) {
            ne |= QCOW_OFLAG_COPIED;
        }
        if (ne != e) {
            qcow2_set_l2_entry(s, buf, (unsigned)j, ne);
            changed = true;
        }
    }
    if (ret >= 0 && changed) {
        qcow2_txn_queue_write_ign(t, x, buf, s->cluster_size,
                                  QCOW2_OL_INACTIVE_L2);
        buf = NULL;
    }
    g_free(buf);
    return ret;
}

static void queue_l1(Qcow2MetaTxn *t, uint64_t offset, const uint64_t *l1,
                     uint32_t n)
{
    uint64_t *be = g_new(uint64_t, MAX(n, 1));

    for (uint32_t i = 0; i < n; i++) {
        be[i] = htobe64(l1[i]);
    }
    qcow2_txn_queue_write(t, offset, be, (uint64_t)n * 8);
}

/*
 * Run phase 2 after phase 1 (t1) switched.  Where it cannot be done
 * (-ENOTSUP before anything is written) the phase-1 view stays, which is
 * as consistent; only an I/O error is returned.
 */
int coroutine_fn qcow2_relayout(BlockNode *bs, Qcow2MetaTxn *t1,
                                Qcow2Relayout *r)
{
    Qcow2State *s = bs->opaque;
    Qcow2MetaTxn *t = qcow2_txn_new(bs);
    GHashTable *active = g_hash_table_new(g_int64_hash, g_int64_equal);
    GHashTable *back = g_hash_table_new_full(g_int64_hash, g_int64_equal,
                                             g_free, g_free);
    uint32_t n = s->l1_size;
    uint64_t *l1 = g_memdup2(s->l1_table, (size_t)MAX(n, 1) * 8);
    uint64_t *act = g_new0(uint64_t, MAX(n, 1));
    uint64_t *sn_l1 = NULL, l1_offset = s->l1_table_offset;
    uint64_t table_offset = s->snapshots_offset, end = 0;
    Qcow2Snapshot *sns = NULL;
    GByteArray *table = NULL;
    bool switched = false;
    int ret = 0;

    qcow2_txn_inherit_freed(t, t1);
    qcow2_txn_restore_refcounts(t, r->rt, r->rt_size, r->rt_offset);
    if (r->file_len < 0) {
        ret = -ENOTSUP;
    }
    for (uint32_t i = 0; i < n; i++) {
        l1[i] &= L1E_OFFSET_MASK;
        act[i] = l1[i];
        if (act[i]) {
            g_hash_table_add(active, &act[i]);
        }
    }
    for (uint32_t i = 0; i < n && i < r->n && ret >= 0; i++) {
        uint64_t c = l1[i], o = r->l2_orig[i];
        if (!o || !c) {
            continue;
        }
        ret = move_l2(bs, t, active, c, o);
        l1[i] = o;
        end = MAX(end, o + s->cluster_size);
        g_hash_table_insert(back, g_memdup2(&c, 8), g_memdup2(&o, 8));
    }
    g_hash_table_destroy(active);
    g_free(act);
    if (ret >= 0) {
        ret = qcow2_snapshot_set_l1_flags(bs, t, l1, n);
    }
    if (ret >= 0 && r->lowered) {
        GHashTable *done = g_hash_table_new_full(g_int64_hash, g_int64_equal,
                                                 g_free, NULL);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t x = l1[i] & L1E_OFFSET_MASK;
            if (x) {
                g_hash_table_add(done, g_memdup2(&x, 8));
            }
        }
        for (uint32_t i = 0; ret >= 0 && i < r->lowered_size; i++) {
            ret = refresh_flags(bs, t, done,
                                r->lowered[i] & L1E_OFFSET_MASK);
        }
        g_hash_table_destroy(done);
    }
    if (ret >= 0 && r->applied >= 0) {
        /* QEMU raises the references first: none is 1 then. */
        Qcow2Snapshot *sn = &s->snapshots[r->applied];
        bool changed = false;
        ret = qcow2_snapshot_load_l1(bs, sn->l1_table_offset, sn->l1_size,
                                     &sn_l1);
        for (uint32_t i = 0; ret >= 0 && i < sn->l1_size; i++) {
            changed |= !!(sn_l1[i] & QCOW_OFLAG_COPIED);
            sn_l1[i] &= ~QCOW_OFLAG_COPIED;
        }
        if (ret >= 0 && changed) {
            uint64_t *be = g_new(uint64_t, MAX(sn->l1_size, 1));
            for (uint32_t i = 0; i < sn->l1_size; i++) {
                be[i] = htobe64(sn_l1[i]);
            }
            qcow2_txn_queue_write_ign(t, sn->l1_table_offset, be,
                                      (uint64_t)sn->l1_size * 8,
                                      QCOW2_OL_INACTIVE_L1);
        }
        g_free(sn_l1);
        sn_l1 = NULL;
    }
    if (ret >= 0 && r->l1_target && r->l1_target != s->l1_table_offset) {
        l1_offset = r->l1_target;
        ret = take_range(t, s, l1_offset, (uint64_t)n * 8);
        if (ret >= 0) {
            ret = qcow2_txn_free_range(t, s->l1_table_offset,
                                       (uint64_t)n * 8);
        }
        queue_l1(t, l1_offset, l1, n);
        end = MAX(end, l1_offset + (uint64_t)n * 8);
    } else if (ret >= 0 && memcmp(l1, s->l1_table, (size_t)n * 8)) {
        ret = -ENOTSUP;
    }
    sns = g_memdup2(s->snapshots, (size_t)MAX(s->nb_snapshots, 1) *
                    sizeof(*sns));
    if (ret >= 0 && r->sn_index >= 0) {
        Qcow2Snapshot *sn = &sns[r->sn_index];
        ret = qcow2_snapshot_load_l1(bs, sn->l1_table_offset, sn->l1_size,
                                     &sn_l1);
        for (uint32_t i = 0; ret >= 0 && i < sn->l1_size; i++) {
            uint64_t e = sn_l1[i] & L1E_OFFSET_MASK;
            uint64_t *o = g_hash_table_lookup(back, &e);
            if (o) {
                sn_l1[i] = *o | (sn_l1[i] & ~L1E_OFFSET_MASK);
            }
        }
        if (ret >= 0) {
            ret = take_range(t, s, r->sn_l1_target,
                             (uint64_t)sn->l1_size * 8);
        }
        if (ret >= 0) {
            ret = qcow2_txn_free_range(t, sn->l1_table_offset,
                                       (uint64_t)sn->l1_size * 8);
        }
        if (ret >= 0) {
            queue_l1(t, r->sn_l1_target, sn_l1, sn->l1_size);
            sn->l1_table_offset = r->sn_l1_target;
            end = MAX(end, r->sn_l1_target + (uint64_t)sn->l1_size * 8);
        }
    }
    if (ret >= 0 && r->table_target) {
        table = qcow2_snapshot_table_build(s->nb_snapshots, sns);
        table_offset = r->table_target;
        ret = take_range(t, s, table_offset, table->len);
        if (ret >= 0) {
            ret = qcow2_txn_free_range(t, s->snapshots_offset,
                                       s->snapshots_size);
        }
        if (ret >= 0) {
            end = MAX(end, table_offset + table->len);
            qcow2_txn_queue_write(t, table_offset,
                                  g_memdup2(table->data, table->len),
                                  table->len);
        }
    }
    if (ret >= 0) {
        Qcow2TxnHeader h = {
            .size = s->size, .l1_size = n, .l1_table_offset = l1_offset,
            .nb_snapshots = s->nb_snapshots,
            .snapshots_offset = table_offset,
        };
        ret = qcow2_txn_commit(t, &h, &switched);
    }
    if (switched) {
        qcow2_snapshot_set_active_l1(s, l1, n, l1_offset);
        l1 = NULL;
        g_free(s->snapshots);
        s->snapshots = sns;
        sns = NULL;
        s->snapshots_offset = table_offset;
        if (ret >= 0) {
            /* QEMU's file ends where its last write does. */
            end = MAX(end, (uint64_t)r->file_len);
            if (file_length(bs) > (int64_t)end) {
                /* Best effort: what it drops is free either way. */
                child_co_truncate(bs->file, (int64_t)end, true,
                                  PREALLOC_MODE_OFF, NULL);
                node_invalidate_length(bs->file->bs);
            }
        }
    } else {
        /* The phase-1 view stays; its freed clusters are still to go. */
        if (ret == -ENOTSUP) {
            ret = 0;
        }
        if (ret >= 0) {
            qcow2_txn_discard_freed(t1);
        }
    }
    if (table) {
        g_byte_array_free(table, true);
    }
    g_free(sns);
    g_free(sn_l1);
    g_free(l1);
    g_hash_table_destroy(back);
    qcow2_txn_free(t);
    return ret;
}
