/* Transactions: an undo log of graph-change steps. */
#include <glib.h>
#include "block-int.h"

typedef struct {
    const TxnActionDrv *drv;
    void *opaque;
} TxnAction;

struct Txn {
    GArray *actions;
};

Txn *txn_new(void)
{
    Txn *txn = g_new(Txn, 1);
    txn->actions = g_array_new(FALSE, FALSE, sizeof(TxnAction));
    return txn;
}

void txn_add(Txn *txn, const TxnActionDrv *drv, void *opaque)
{
    TxnAction a = { drv, opaque };
    g_array_append_val(txn->actions, a);
}

static void txn_finish(Txn *txn, bool commit)
{
    guint n = txn->actions->len;
    /* Commit runs forwards, abort backwards; cleaning always backwards. */
    for (guint i = 0; i < n; i++) {
        TxnAction *a = &g_array_index(txn->actions, TxnAction,
                                      commit ? i : n - 1 - i);
        if (commit && a->drv->commit) {
            a->drv->commit(a->opaque);
        } else if (!commit && a->drv->abort) {
            a->drv->abort(a->opaque);
        }
    }
    for (guint i = n; i-- > 0;) {
        TxnAction *a = &g_array_index(txn->actions, TxnAction, i);
        if (a->drv->clean) {
            a->drv->clean(a->opaque);
        }
    }
    g_array_free(txn->actions, TRUE);
    g_free(txn);
}

void txn_commit(Txn *txn)
{
    txn_finish(txn, true);
}

void txn_abort(Txn *txn)
{
    txn_finish(txn, false);
}
