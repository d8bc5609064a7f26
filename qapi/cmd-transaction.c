/*
 * QMP's `transaction`: all the actions or none (see transaction.h for the
 * protocol between the runner and the actions), and the `abort` action,
 * which always fails.  Behaviour and messages are QEMU 7.2's.
 */
#include <string.h>

#include "transaction.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/error.h"
#include "qapi-commands.h"

static bool abort_prepare(TxnState *s, GError **errp)
{
    (void)s;
    error_setg(errp, "Transaction aborted using Abort action");
    return false;
}

static const TxnActionOps txn_abort = {
    .prepare = abort_prepare,
};

/* Indexed by kind; a kind without an entry cannot reach the runner, since
 * the schema's reader refuses kinds TransactionActionKind lacks. */
static const TxnActionOps *const txn_actions[TRANSACTION_ACTION_KIND__MAX] = {
    [TRANSACTION_ACTION_KIND_ABORT] = &txn_abort,
    [TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ADD] = &txn_bitmap_add,
    [TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_REMOVE] = &txn_bitmap_remove,
    [TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_CLEAR] = &txn_bitmap_clear,
    [TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ENABLE] = &txn_bitmap_enable,
    [TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_DISABLE] = &txn_bitmap_disable,
    [TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_MERGE] = &txn_bitmap_merge,
    [TRANSACTION_ACTION_KIND_X_STRATA_BLOCK_DIRTY_BITMAP_COPY] =
        &txn_bitmap_copy,
    [TRANSACTION_ACTION_KIND_X_STRATA_BLOCK_DIRTY_BITMAP_RECOVER] =
        &txn_bitmap_recover,
    [TRANSACTION_ACTION_KIND_BLOCKDEV_BACKUP] = &txn_blockdev_backup,
    [TRANSACTION_ACTION_KIND_DRIVE_BACKUP] = &txn_drive_backup,
    [TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT] = &txn_external_snapshot,
    [TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC] = &txn_external_snapshot,
    [TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_INTERNAL_SYNC] =
        &txn_internal_snapshot,
    [TRANSACTION_ACTION_KIND_X_STRATA_BACKUP_CHECKPOINT] =
        &txn_backup_checkpoint,
};

const TxnActionOps *txn_action_ops(TransactionActionKind kind)
{
    g_assert(kind >= 0 && kind < TRANSACTION_ACTION_KIND__MAX &&
             txn_actions[kind]);
    return txn_actions[kind];
}

bool txn_check_completion_mode(TxnState *s, GError **errp)
{
    if (s->props->completion_mode != ACTION_COMPLETION_MODE_INDIVIDUAL) {
        error_setg(errp, "Action '%s' does not support Transaction property "
                   "completion-mode = %s",
                   TransactionActionKind_str(s->action->type),
                   ActionCompletionMode_str(s->props->completion_mode));
        return false;
    }
    return true;
}

BlockNode *txn_lookup_node(const char *device, const char *node_name,
                           GError **errp)
{
    /* The daemon has no named devices: a device name finds nothing. */
    BlockNode *bs = node_name ? node_find(node_name) : NULL;

    if (!bs) {
        error_setg(errp, "Cannot find device='%s' nor node-name='%s'",
                   device ? device : "", node_name ? node_name : "");
    }
    return bs;
}

BlockNode *txn_root_node(const char *name, GError **errp)
{
    BlockNode *bs = txn_lookup_node(name, name, errp);

    if (!bs) {
        return NULL;
    }
    /* As QEMU's bdrv_is_root_node(): only devices (backends) may use it. */
    for (BlockChild *c = node_next_parent(bs, NULL); c;
         c = node_next_parent(bs, c)) {
        if (child_parent_kind(c) != PARENT_BACKEND) {
            error_setg(errp, "Need a root block node");
            return NULL;
        }
    }
    if (!node_is_inserted(bs)) {
        error_setg(errp, "Device has no medium");
        return NULL;
    }
    return bs;
}

bool txn_run(TransactionActionList *actions,
             const TransactionProperties *props, GError **errp)
{
    TransactionProperties effective = {
        .has_completion_mode = true,
        .completion_mode = props && props->has_completion_mode
                           ? props->completion_mode
                           : ACTION_COMPLETION_MODE_INDIVIDUAL,
    };
    JobTxn *job_txn = NULL;
    GPtrArray *states = g_ptr_array_new();
    bool ok = true;

    if (effective.completion_mode != ACTION_COMPLETION_MODE_INDIVIDUAL) {
        job_txn = job_txn_new();
    }
    /* Requests in flight finish before any action looks at a node; each
     * action then keeps its own nodes drained until it is cleaned. */
    drain_all_begin();
    drain_all_end();

    for (TransactionActionList *l = actions; l; l = l->next) {
        const TxnActionOps *ops = txn_action_ops(l->value->type);
        TxnState *s = g_new0(TxnState, 1);

        s->ops = ops;
        s->action = l->value;
        s->props = &effective;
        s->job_txn = job_txn;
        s->opaque = ops->state_size ? g_malloc0(ops->state_size) : NULL;
        g_ptr_array_add(states, s);
        if (!ops->prepare(s, errp)) {
            ok = false;
            break;
        }
    }

    if (ok) {
        for (guint i = 0; i < states->len; i++) {
            TxnState *s = states->pdata[i];
            if (s->ops->commit) {
                s->ops->commit(s);
            }
        }
    } else {
        for (guint i = states->len; i-- > 0;) {
            TxnState *s = states->pdata[i];
            if (s->ops->abort) {
                s->ops->abort(s);
            }
        }
    }
    for (guint i = 0; i < states->len; i++) {
        TxnState *s = states->pdata[i];
        if (s->ops->clean) {
            s->ops->clean(s);
        }
        g_free(s->opaque);
        g_free(s);
    }
    g_ptr_array_free(states, true);
    if (job_txn) {
        job_txn_unref(job_txn);
    }
    return ok;
}

bool txn_run_one(TransactionAction *action, GError **errp)
{
    TransactionActionList list = { .next = NULL, .value = action };

    return txn_run(&list, NULL, errp);
}

void qmp_transaction(TransactionActionList *actions,
                     TransactionProperties *properties, GError **errp)
{
    txn_run(actions, properties, errp);
}
