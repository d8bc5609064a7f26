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
 */
#include "transaction.h"
#include "qapi-commands.h"

void qmp_x_strata_backup_checkpoint(XStrataBackupCheckpoint *arg,
                                    GError **errp)
{
    BlockdevBackup backup = {
        .job_id = arg->job_id,
        .device = arg->node,
        .target = arg->target,
        .sync = MIRROR_SYNC_MODE_NONE,
        .filter_node_name = arg->filter_node_name,
    };
    BlockDirtyBitmap freeze = { .node = arg->node, .name = arg->bitmap };
    BlockDirtyBitmapAdd start = {
        .node = arg->node,
        .name = arg->new_bitmap,
        .has_granularity = arg->has_granularity,
        .granularity = arg->granularity,
        .has_persistent = arg->has_persistent,
        .persistent = arg->persistent,
    };
    TransactionAction a_backup = {
        .type = TRANSACTION_ACTION_KIND_BLOCKDEV_BACKUP,
        .u.blockdev_backup.data = &backup,
    };
    TransactionAction a_freeze = {
        .type = TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_DISABLE,
        .u.block_dirty_bitmap_disable.data = &freeze,
    };
    TransactionAction a_start = {
        .type = TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ADD,
        .u.block_dirty_bitmap_add.data = &start,
    };
    TransactionActionList l_start = { .next = NULL, .value = &a_start };
    TransactionActionList l_freeze = { .next = &l_start,
                                       .value = &a_freeze };
    /* The first checkpoint of a disk has no bitmap to freeze: its view is
     * a full backup. */
    TransactionActionList l_backup = {
        .next = arg->bitmap ? &l_freeze : &l_start,
        .value = &a_backup,
    };

    txn_run(&l_backup, NULL, errp);
}
