/*
 * What the qcow2 snapshot files share (qcow2-snapshot.c: the operations,
 * qcow2-snapshot-table.c: the table, qcow2-snapshot-relayout.c: the
 * second phase that moves the new tables to QEMU's places).
 */
#ifndef QCOW2_SNAPSHOT_INT_H
#define QCOW2_SNAPSHOT_INT_H

#include "qcow2.h"

#define SN_EXTRA_SIZE 24          /* the extra data QEMU 7.2 writes */

/* ---- qcow2-snapshot-table.c ---- */

/* n entries as QEMU serialises the table (8-aligned, last one unpadded). */
GByteArray *qcow2_snapshot_table_build(uint32_t n, const Qcow2Snapshot *sns);
/*
 * The new snapshot table (n entries) in fresh clusters of the
 * transaction; the old one is freed in the new view.
 */
int coroutine_fn qcow2_snapshot_table_txn_write(BlockNode *bs,
                                                Qcow2MetaTxn *t, uint32_t n,
                                                const Qcow2Snapshot *sns,
                                                uint64_t *offset,
                                                uint64_t *size);

/* ---- qcow2-snapshot.c ---- */

/* The L1 table at offset, CPU order (the active one comes from memory). */
int coroutine_fn qcow2_snapshot_load_l1(BlockNode *bs, uint64_t offset,
                                        uint32_t size, uint64_t **out);
/* The COPIED flags of l1's own entries, from the transaction's refcounts. */
int coroutine_fn qcow2_snapshot_set_l1_flags(BlockNode *bs, Qcow2MetaTxn *t,
                                             uint64_t *l1, uint32_t n);
/* After a commit: the active L1 table of the new view (takes l1). */
void qcow2_snapshot_set_active_l1(Qcow2State *s, uint64_t *l1, uint32_t n,
                                  uint64_t offset);

/* ---- qcow2-snapshot-relayout.c ---- */

/* What phase 2 needs to know of phase 1 (see qcow2-snapshot-relayout.c). */
typedef struct Qcow2Relayout {
    uint64_t *rt;            /* the refcount table before phase 1 */
    uint64_t rt_size;
    uint64_t rt_offset;
    int64_t file_len;        /* before phase 1 */
    uint32_t n;              /* entries of l2_orig */
    uint64_t *l2_orig;       /* per active L1 index: the replaced L2 table */
    uint64_t l1_target;      /* the active L1 table's place, 0: unmoved */
    int sn_index;            /* the snapshot whose L1 table goes to... */
    uint64_t sn_l1_target;   /* ...this place (-1: none) */
    uint64_t table_target;   /* the snapshot table's place, 0: unmoved */
    /*
     * The L1 table whose L2 tables QEMU lowers the references of (the old
     * active one on apply, the deleted snapshot's): it rewrites the COPIED
     * flags of those that survive from the new refcounts.
     */
    uint64_t *lowered;
    uint32_t lowered_size;
    int applied;             /* apply: the snapshot (flags cleared), or -1 */
} Qcow2Relayout;

/* Before phase 1: the refcounts and file length it starts from. */
void qcow2_relayout_init(BlockNode *bs, Qcow2Relayout *r);
void qcow2_relayout_clear(Qcow2Relayout *r);
/* Phase-1 copies from here on: past the file's end and QEMU's places. */
void qcow2_relayout_floor(BlockNode *bs, Qcow2MetaTxn *t, Qcow2Relayout *r,
                          uint64_t end);
/*
 * Run phase 2 after phase 1 (t1) switched.  Where it cannot be done
 * (-ENOTSUP before anything is written) the phase-1 view stays, which is
 * as consistent; only an I/O error is returned.
 */
int coroutine_fn qcow2_relayout(BlockNode *bs, Qcow2MetaTxn *t1,
                                Qcow2Relayout *r);

#endif
