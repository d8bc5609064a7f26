/*
 * Permission transactions.
 *
 * Every edge takes a set of permissions (perm) and shares a set with other
 * users of the same node (shared).  A node's cumulative permissions are the
 * union of its parents' perm and the intersection of their shared.  After
 * any graph change the affected nodes are walked parents-first:
 *
 *   1. every pair of parent edges is checked: what one takes, the other
 *      must share;
 *   2. a writer on a read-only node is refused;
 *   3. the driver may refuse (the file driver takes image locks here);
 *   4. the driver says what the node needs from each child (child_perm),
 *      and the walk continues below.
 *
 * Each step is recorded in the transaction, so that abort puts back every
 * edge's permissions and lets drivers drop the locks they took.
 */
#include <string.h>
#include "block-int.h"

static const char *const perm_name_table[BLK_PERM_COUNT] = {
    "consistent read", "write", "write unchanged", "resize",
};

const char *perm_name(uint64_t single_perm)
{
    for (int i = 0; i < BLK_PERM_COUNT; i++) {
        if (single_perm == (1ULL << i)) {
            return perm_name_table[i];
        }
    }
    return "unknown";
}

char *perm_names(uint64_t perm)
{
    GString *s = g_string_new(NULL);
    for (int i = 0; i < BLK_PERM_COUNT; i++) {
        if (perm & (1ULL << i)) {
            if (s->len) {
                g_string_append(s, ", ");
            }
            g_string_append(s, perm_name_table[i]);
        }
    }
    return g_string_free(s, FALSE);
}

/* ---- Undo records ---- */

typedef struct {
    BlockNode *bs;
    uint64_t old_perm, old_shared;
    uint64_t new_perm, new_shared;
    bool driver_checked;
} NodePermUpdate;

static void node_perm_commit(void *opaque)
{
    NodePermUpdate *u = opaque;
    if (u->driver_checked && u->bs->drv->set_perm) {
        u->bs->drv->set_perm(u->bs, u->new_perm, u->new_shared);
    }
}

static void node_perm_abort(void *opaque)
{
    NodePermUpdate *u = opaque;
    u->bs->cum_perm = u->old_perm;
    u->bs->cum_shared = u->old_shared;
    if (u->driver_checked && u->bs->drv->abort_perm_update) {
        u->bs->drv->abort_perm_update(u->bs);
    }
}

static void node_perm_clean(void *opaque)
{
    NodePermUpdate *u = opaque;
    node_unref(u->bs);
    g_free(u);
}

static const TxnActionDrv node_perm_drv = {
    .commit = node_perm_commit,
    .abort = node_perm_abort,
    .clean = node_perm_clean,
};

/* ---- Walk order ---- */

static void topo_visit(BlockNode *bs, GHashTable *seen, GSList **out)
{
    if (g_hash_table_contains(seen, bs)) {
        return;
    }
    g_hash_table_add(seen, bs);
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        topo_visit(c->bs, seen, out);
    }
    /* Prepending after the children gives parents before children. */
    *out = g_slist_prepend(*out, bs);
}

static GSList *topo_sort(GSList *nodes)
{
    GHashTable *seen = g_hash_table_new(NULL, NULL);
    GSList *out = NULL;
    for (GSList *l = nodes; l; l = l->next) {
        topo_visit(l->data, seen, &out);
    }
    g_hash_table_destroy(seen);
    return out;
}

/* ---- Checks ---- */

static char *child_user_desc(BlockChild *c)
{
    return child_parent_desc(c);
}

/* QEMU's wording, so that scripts matching the message keep working. */
static bool parents_compatible(BlockNode *bs, GError **errp)
{
    for (GList *a = bs->parents; a; a = a->next) {
        BlockChild *ca = a->data;
        for (GList *b = bs->parents; b; b = b->next) {
            BlockChild *cb = b->data;
            if (ca == cb) {
                continue;
            }
            /* During a reopen the final permissions decide (has_final). */
            uint64_t pa = ca->has_final ? ca->final_perm : ca->perm;
            uint64_t sb = cb->has_final ? cb->final_shared : cb->shared;
            uint64_t conflict = pa & ~sb;
            if (!conflict) {
                continue;
            }
            char *names = perm_names(conflict);
            char *da = child_user_desc(ca);
            char *db = child_user_desc(cb);
            error_setg(errp,
                       "Permission conflict on node '%s': permissions '%s' are "
                       "both required by %s (uses node '%s' as '%s' child) and "
                       "unshared by %s (uses node '%s' as '%s' child).",
                       bs->node_name, names, da, bs->node_name, ca->name, db,
                       bs->node_name, cb->name);
            g_free(names);
            g_free(da);
            g_free(db);
            return false;
        }
    }
    return true;
}

static void node_child_perm(BlockNode *bs, BlockChild *c, uint64_t perm,
                            uint64_t shared, uint64_t *nperm, uint64_t *nshared)
{
    ReopenState *rs = node_reopen_state(bs);
    if (bs->drv->child_perm) {
        bs->drv->child_perm(bs, c, c->role, rs, perm, shared, nperm, nshared);
    } else {
        node_default_perms(bs, c, c->role, rs, perm, shared, nperm, nshared);
    }
    /* A force-share child node lets everyone do anything beside us. */
    if (c->bs->force_share) {
        *nshared = BLK_PERM_ALL;
    }
}

static bool node_refresh_one(BlockNode *bs, Txn *txn, bool ignore_errors,
                             GError **errp)
{
    uint64_t perm = 0, shared = BLK_PERM_ALL;
    uint64_t final_perm = 0, final_shared = BLK_PERM_ALL;
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        perm |= c->perm;
        shared &= c->shared;
        final_perm |= c->has_final ? c->final_perm : c->perm;
        final_shared &= c->has_final ? c->final_shared : c->shared;
    }

    if (!ignore_errors) {
        if (!parents_compatible(bs, errp)) {
            return false;
        }
        /*
         * The read-only check looks at what will be used after a reopen:
         * a format going read-only together with its file still holds the
         * old write on the file edge during the transition.
         */
        if ((final_perm & (BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED)) &&
            !node_writable_after_reopen(bs)) {
            if (bs->read_only) {
                error_setg(errp, "Block node is read-only");
            } else {
                error_setg(errp, "Read-only block node '%s' cannot support "
                           "read-write users", bs->node_name);
            }
            return false;
        }
    }

    NodePermUpdate *u = g_new0(NodePermUpdate, 1);
    u->bs = bs;
    node_ref(bs);
    u->old_perm = bs->cum_perm;
    u->old_shared = bs->cum_shared;
    u->new_perm = perm;
    u->new_shared = shared;
    if (bs->drv->check_perm) {
        GError *local = NULL;
        if (bs->drv->check_perm(bs, perm, shared, &local) < 0) {
            if (!ignore_errors) {
                g_propagate_error(errp, local);
                node_unref(bs);
                g_free(u);
                return false;
            }
            g_clear_error(&local);
        } else {
            u->driver_checked = true;
        }
    }
    bs->cum_perm = perm;
    bs->cum_shared = shared;
    txn_add(txn, &node_perm_drv, u);

    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        uint64_t np, ns;
        node_child_perm(bs, c, perm, shared, &np, &ns);
        ReopenState *rs = node_reopen_state(bs);
        if (rs && !ignore_errors) {
            /*
             * The final permissions are what the new state asks, from the
             * parents' final permissions (as QEMU computes them with the
             * reopen queue): a filter whose writer goes read-only passes no
             * write down.  While the reopen is prepared the node may still
             * be used the old way: take what either state needs and share
             * what both allow.  Locks follow this union; the checks follow
             * the final value.
             */
            uint64_t fp, fs;
            node_child_perm(bs, c, final_perm, final_shared, &fp, &fs);
            child_set_final_noperm(c, fp, fs, txn);
            np |= fp | c->perm;
            ns &= fs & c->shared;
        }
        if (np != c->perm || ns != c->shared) {
            child_set_perm_noperm(c, np, ns, txn);
        }
    }
    return true;
}

bool perm_refresh_nodes(GSList *nodes, Txn *txn, bool ignore_errors,
                        GError **errp)
{
    GSList *order = topo_sort(nodes);
    bool ok = true;
    for (GSList *l = order; l; l = l->next) {
        if (!node_refresh_one(l->data, txn, ignore_errors, errp)) {
            ok = false;
            break;
        }
    }
    g_slist_free(order);
    return ok;
}

void node_get_cumulative_perm(const BlockNode *bs, uint64_t *perm,
                              uint64_t *shared)
{
    *perm = bs->cum_perm;
    *shared = bs->cum_shared;
}

bool node_refresh_perms(BlockNode *bs, GError **errp)
{
    Txn *txn = txn_new();
    GSList *l = g_slist_prepend(NULL, bs);
    bool ok = perm_refresh_nodes(l, txn, false, errp);
    g_slist_free(l);
    if (ok) {
        txn_commit(txn);
    } else {
        txn_abort(txn);
    }
    return ok;
}

/* ---- Standard policies ---- */

void node_filter_perms(BlockNode *bs, BlockChild *c, unsigned role,
                       const ReopenState *rs, uint64_t perm, uint64_t shared,
                       uint64_t *nperm, uint64_t *nshared)
{
    /* A filter asks of its child exactly what its parents ask of it. */
    *nperm = perm & BLK_PERM_ALL;
    *nshared = shared & BLK_PERM_ALL;
}

void node_default_perms(BlockNode *bs, BlockChild *c, unsigned role,
                        const ReopenState *rs, uint64_t perm, uint64_t shared,
                        uint64_t *nperm, uint64_t *nshared)
{
    if (role & CHILD_ROLE_COW) {
        /*
         * A backing file is only read.  If the parents cope with changing
         * data, others may write and resize it; rewriting the same data is
         * always fine.  (QEMU 7.2's rules, so image locks match.)
         */
        *nperm = perm & BLK_PERM_CONSISTENT_READ;
        *nshared = (shared & BLK_PERM_WRITE) ? BLK_PERM_WRITE | BLK_PERM_RESIZE : 0;
        *nshared |= BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
        return;
    }

    node_filter_perms(bs, c, role, rs, perm, shared, nperm, nshared);
    if (role & CHILD_ROLE_METADATA) {
        /*
         * A format driver writes its metadata even when the guest does not
         * write, and it cannot let anyone else write or resize the file
         * under its metadata.
         */
        bool writable = rs ? !rs->read_only : !bs->read_only;
        if (writable) {
            *nperm |= BLK_PERM_WRITE | BLK_PERM_RESIZE;
        }
        *nperm |= BLK_PERM_CONSISTENT_READ;
        *nshared &= ~(BLK_PERM_WRITE | BLK_PERM_RESIZE);
    }
    if (role & CHILD_ROLE_DATA) {
        /*
         * Guest data lives at fixed offsets: nobody may resize it under us;
         * rewriting "unchanged" data may change it here (a format maps it
         * elsewhere), and writing may grow the file.
         */
        *nshared &= ~BLK_PERM_RESIZE;
        if (*nperm & BLK_PERM_WRITE_UNCHANGED) {
            *nperm |= BLK_PERM_WRITE;
        }
        if (*nperm & BLK_PERM_WRITE) {
            *nperm |= BLK_PERM_RESIZE;
        }
    }
}
