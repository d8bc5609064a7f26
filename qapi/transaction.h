/*
 * The actions of QMP's `transaction` (qapi/cmd-transaction.c), as QEMU 7.2
 * runs them: every action is prepared in the order given; if all prepare,
 * all commit in that order, otherwise every action prepared so far (the
 * failing one included) is aborted in reverse order; then all are cleaned
 * in order.  Only prepare may fail.  A command that is one action
 * (blockdev-snapshot, ...) runs as a transaction of that one action, so
 * both paths share the same checks and messages.
 *
 * Adding an action (a later issue's block-dirty-bitmap-add, backup, ...):
 * its kind in TransactionActionKind and TransactionAction
 * (qapi/schema/transaction.json), a const TxnActionOps with its callbacks
 * in the qapi/cmd-*.c file of its area (declared at the end of this file),
 * and one entry in the table of qapi/cmd-transaction.c.  Nothing else
 * changes.
 */
#ifndef QAPI_TRANSACTION_H
#define QAPI_TRANSACTION_H

#include "strata/block.h"
#include "strata/job.h"
#include "qapi-types.h"

typedef struct TxnState TxnState;

typedef struct TxnActionOps {
    size_t state_size;        /* bytes of the action's own state (>= 0) */
    /* Do the work, so that abort can undo it; false with *errp set. */
    bool (*prepare)(TxnState *s, GError **errp);
    void (*commit)(TxnState *s);        /* may be NULL */
    void (*abort)(TxnState *s);         /* may be NULL */
    /* After commit or abort, always, even when prepare failed early. */
    void (*clean)(TxnState *s);         /* may be NULL */
} TxnActionOps;

struct TxnState {
    const TxnActionOps *ops;
    TransactionAction *action;
    /* The transaction's properties, completion-mode always set. */
    const TransactionProperties *props;
    /* Jobs an action starts join it (NULL unless completion-mode=grouped). */
    JobTxn *job_txn;
    void *opaque;             /* state_size zeroed bytes, or NULL */
};

/* Run a list of actions as one transaction. */
bool txn_run(TransactionActionList *actions,
             const TransactionProperties *props, GError **errp);
/* Run one action on its own (completion-mode individual). */
bool txn_run_one(TransactionAction *action, GError **errp);

/* The ops of an action kind (an action made of other actions runs them). */
const TxnActionOps *txn_action_ops(TransactionActionKind kind);

/* "Action 'x' does not support Transaction property completion-mode = y" */
bool txn_check_completion_mode(TxnState *s, GError **errp);

/*
 * QEMU's bdrv_lookup_bs(): the node named by device (there are no named
 * devices in the daemon) or node_name; either may be NULL.  "Cannot find
 * device='x' nor node-name='y'".
 */
BlockNode *txn_lookup_node(const char *device, const char *node_name,
                           GError **errp);
/* QEMU's qmp_get_root_bs(): a node that no other node or job uses. */
BlockNode *txn_root_node(const char *name, GError **errp);

/* ---- The actions (each in its area's file) ---- */

/* qapi/cmd-snapshot.c: blockdev-snapshot and blockdev-snapshot-sync */
extern const TxnActionOps txn_external_snapshot;
/* qapi/cmd-snapshot.c: blockdev-snapshot-internal-sync */
extern const TxnActionOps txn_internal_snapshot;
/*
 * qapi/cmd-snapshot.c: blockdev-snapshot-sync's new overlay for old_bs
 * (created unless mode=existing, opened without backing, with old_bs's
 * access and cache flags), for x-strata-machine-snapshot/-restore.
 */
BlockNode *snapshot_open_new_overlay(BlockdevSnapshotSync *s,
                                     BlockNode *old_bs, GError **errp);

/* qapi/cmd-backup.c: blockdev-backup and drive-backup */
extern const TxnActionOps txn_blockdev_backup;
extern const TxnActionOps txn_drive_backup;

/* qapi/cmd-bitmap.c: block-dirty-bitmap-* */
extern const TxnActionOps txn_bitmap_add;
extern const TxnActionOps txn_bitmap_remove;
extern const TxnActionOps txn_bitmap_clear;
extern const TxnActionOps txn_bitmap_enable;
extern const TxnActionOps txn_bitmap_disable;
extern const TxnActionOps txn_bitmap_merge;
/* qapi/cmd-bitmap.c: strata's x-strata-block-dirty-bitmap-recover, -copy */
extern const TxnActionOps txn_bitmap_recover;
extern const TxnActionOps txn_bitmap_copy;
/* qapi/cmd-backup-checkpoint.c: strata's x-strata-backup-checkpoint */
extern const TxnActionOps txn_backup_checkpoint;

#endif
