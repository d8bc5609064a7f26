/*
 * x-strata-backup-checkpoint (docs/qmp.md "Fleecing"): the point where
 * one backup's changes end and the next one's begin, as one command.
 *
 * QEMU 7.2 users get the same from one `transaction` of three actions,
 * and this command is exactly that transaction, run through the same
 * runner (qapi/cmd-transaction.c) with the same actions, so its checks,
 * messages, events and rollback are QEMU's:
 *
 *   1. blockdev-backup sync=none from the disk to the fleecing target:
 *      its copy-before-write filter, put above the disk for all of the
 *      disk's users, freezes the point-in-time view (snapshot-access over
 *      the filter reads it, or the target when it is an overlay of the
 *      disk);
 *   2. block-dirty-bitmap-disable of the bitmap of the last checkpoint,
 *      which then holds exactly the clusters the view has changed since;
 *   3. block-dirty-bitmap-add of the next checkpoint's bitmap.
 *
 * The order matters for atomicity: the backup action drains the disk at
 * prepare and keeps it drained until the transaction is cleaned, so when
 * it comes first no guest write can land between the freeze and the
 * bitmaps' change, even from an export in an iothread; each write is
 * either in the view and the old bitmap, or after the view and in the
 * new bitmap, never both and never neither.
 *
 * It is also a `transaction` action (txn_backup_checkpoint) that runs the
 * same three actions as its steps, so one transaction can checkpoint
 * several disks at one point in time, or combine a checkpoint with other
 * actions: all or nothing, exactly as QEMU 7.2 runs the expanded list.
 */
#include <string.h>

#include "transaction.h"
#include "qapi-commands.h"

enum { CK_BACKUP, CK_FREEZE, CK_START, CK_STEPS };

/* The QEMU actions a checkpoint is, built over its arguments. */
typedef struct Checkpoint {
    BlockdevBackup backup;
    BlockDirtyBitmap freeze;
    BlockDirtyBitmapAdd start;
    TransactionAction action[CK_STEPS];
    /* The steps in order: the freeze only when there is a bitmap. */
    TransactionAction *steps[CK_STEPS];
    int n_steps;
} Checkpoint;

static void checkpoint_build(Checkpoint *ck, XStrataBackupCheckpoint *arg)
{
    memset(ck, 0, sizeof(*ck));
    ck->backup = (BlockdevBackup) {
        .job_id = arg->job_id,
        .device = arg->node,
        .target = arg->target,
        .sync = MIRROR_SYNC_MODE_NONE,
        .filter_node_name = arg->filter_node_name,
    };
    ck->freeze = (BlockDirtyBitmap) { .node = arg->node, .name = arg->bitmap };
    ck->start = (BlockDirtyBitmapAdd) {
        .node = arg->node,
        .name = arg->new_bitmap,
        .has_granularity = arg->has_granularity,
        .granularity = arg->granularity,
        .has_persistent = arg->has_persistent,
        .persistent = arg->persistent,
    };
    ck->action[CK_BACKUP].type = TRANSACTION_ACTION_KIND_BLOCKDEV_BACKUP;
    ck->action[CK_BACKUP].u.blockdev_backup.data = &ck->backup;
    ck->action[CK_FREEZE].type =
        TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_DISABLE;
    ck->action[CK_FREEZE].u.block_dirty_bitmap_disable.data = &ck->freeze;
    ck->action[CK_START].type = TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ADD;
    ck->action[CK_START].u.block_dirty_bitmap_add.data = &ck->start;

    ck->steps[ck->n_steps++] = &ck->action[CK_BACKUP];
    /* The first checkpoint of a disk has no bitmap to freeze: its view is
     * a full backup. */
    if (arg->bitmap) {
        ck->steps[ck->n_steps++] = &ck->action[CK_FREEZE];
    }
    ck->steps[ck->n_steps++] = &ck->action[CK_START];
}

void qmp_x_strata_backup_checkpoint(XStrataBackupCheckpoint *arg,
                                    GError **errp)
{
    Checkpoint ck;
    TransactionActionList list[CK_STEPS];

    checkpoint_build(&ck, arg);
    for (int i = 0; i < ck.n_steps; i++) {
        list[i].value = ck.steps[i];
        list[i].next = i + 1 < ck.n_steps ? &list[i + 1] : NULL;
    }
    txn_run(list, NULL, errp);
}

/*
 * The action: its steps are prepared, committed, aborted and cleaned by
 * their own ops at the action's place in the transaction, each with the
 * transaction's properties and job transaction, so the outcome, the
 * messages (a step's own, naming the step's action where QEMU names it)
 * and the events are those of the steps written out in the list.
 */
typedef struct CheckpointState {
    Checkpoint ck;
    TxnState step[CK_STEPS];
    int n_started;      /* steps whose prepare was called */
} CheckpointState;

static bool checkpoint_prepare(TxnState *s, GError **errp)
{
    CheckpointState *cs = s->opaque;

    checkpoint_build(&cs->ck, s->action->u.x_strata_backup_checkpoint.data);
    for (int i = 0; i < cs->ck.n_steps; i++) {
        TxnState *st = &cs->step[i];
        const TxnActionOps *ops = txn_action_ops(cs->ck.steps[i]->type);

        st->ops = ops;
        st->action = cs->ck.steps[i];
        st->props = s->props;
        st->job_txn = s->job_txn;
        st->opaque = ops->state_size ? g_malloc0(ops->state_size) : NULL;
        cs->n_started = i + 1;
        if (!ops->prepare(st, errp)) {
            return false;
        }
    }
    return true;
}

static void checkpoint_commit(TxnState *s)
{
    CheckpointState *cs = s->opaque;

    for (int i = 0; i < cs->n_started; i++) {
        if (cs->step[i].ops->commit) {
            cs->step[i].ops->commit(&cs->step[i]);
        }
    }
}

/* As the runner: the failing step too, in reverse order. */
static void checkpoint_abort(TxnState *s)
{
    CheckpointState *cs = s->opaque;

    for (int i = cs->n_started; i-- > 0;) {
        if (cs->step[i].ops->abort) {
            cs->step[i].ops->abort(&cs->step[i]);
        }
    }
}

static void checkpoint_clean(TxnState *s)
{
    CheckpointState *cs = s->opaque;

    for (int i = 0; i < cs->n_started; i++) {
        if (cs->step[i].ops->clean) {
            cs->step[i].ops->clean(&cs->step[i]);
        }
        g_free(cs->step[i].opaque);
    }
}

const TxnActionOps txn_backup_checkpoint = {
    .state_size = sizeof(CheckpointState),
    .prepare = checkpoint_prepare,
    .commit = checkpoint_commit,
    .abort = checkpoint_abort,
    .clean = checkpoint_clean,
};
