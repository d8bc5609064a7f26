/*
 * Edges: attach, detach, retarget, and the permission transactions around
 * them.  Each public edit builds a transaction from undoable primitives,
 * refreshes permissions below every node whose parents changed, and either
 * commits or rolls everything back.
 */
#include <string.h>
#include "block-int.h"

/* ---- Parent class for node parents ---- */

static char *child_of_node_desc(BlockChild *c)
{
    BlockNode *parent = c->opaque;
    return g_strdup_printf("node '%s'", parent->node_name);
}

const BlockChildClass child_of_node = {
    .kind = "node",
    .parent_is_node = true,
    .get_parent_desc = child_of_node_desc,
};

char *child_parent_desc(const BlockChild *c)
{
    if (c->klass->get_parent_desc) {
        return c->klass->get_parent_desc((BlockChild *)c);
    }
    return g_strdup_printf("a %s", c->klass->kind);
}

/* ---- Undoable primitives ---- */

typedef struct {
    BlockChild *c;
    int child_index, parent_index;
    bool was_file, was_backing;   /* the parent's shortcut pointed at c */
    bool aborted;          /* added, then taken back: free when cleaned */
} ChildLinkUndo;

static void child_link(BlockChild *c, int parent_index, int child_index)
{
    c->bs->parents = g_list_insert(c->bs->parents, c, child_index);
    if (c->klass->parent_is_node) {
        BlockNode *parent = c->opaque;
        parent->children = g_list_insert(parent->children, c, parent_index);
    }
}

static void child_unlink(BlockChild *c, int *parent_index, int *child_index)
{
    if (child_index) {
        *child_index = g_list_index(c->bs->parents, c);
    }
    c->bs->parents = g_list_remove(c->bs->parents, c);
    if (c->klass->parent_is_node) {
        BlockNode *parent = c->opaque;
        if (parent_index) {
            *parent_index = g_list_index(parent->children, c);
        }
        parent->children = g_list_remove(parent->children, c);
        if (parent->file == c) {
            parent->file = NULL;
        }
        if (parent->backing == c) {
            parent->backing = NULL;
        }
    }
}

static void child_free(BlockChild *c)
{
    g_free(c->name);
    if (c->freezers) {
        g_ptr_array_unref(c->freezers);
    }
    g_free(c);
}

static void child_undo_free(void *opaque)
{
    g_free(opaque);
}

static void child_add_abort_free(void *opaque)
{
    ChildLinkUndo *u = opaque;
    child_unlink(u->c, NULL, NULL);
    BlockNode *bs = u->c->bs;
    /* Undo the drain the new parent was put into on attach. */
    if (u->c->parent_quiesced && u->c->klass->drained_end) {
        for (int i = 0; i < bs->quiesce_counter; i++) {
            u->c->klass->drained_end(u->c);
        }
    }
    child_free(u->c);
    u->c = NULL;
    node_unref(bs);
}

static const TxnActionDrv child_add_drv = {
    .abort = child_add_abort_free,
    .clean = child_undo_free,
};

BlockChild *child_new_noperm(BlockNode *child_bs, const char *name,
                             const BlockChildClass *klass, unsigned role,
                             uint64_t perm, uint64_t shared, void *opaque,
                             Txn *txn)
{
    BlockChild *c = g_new0(BlockChild, 1);
    c->name = g_strdup(name);
    c->role = role;
    c->klass = klass;
    c->opaque = opaque;
    c->bs = child_bs;
    c->perm = perm;
    c->shared = shared;
    node_ref(child_bs);
    child_link(c, -1, -1);
    /* A new user of a drained node must hold off like the others. */
    if (child_bs->quiesce_counter > 0 && !klass->parent_is_node &&
        klass->drained_begin) {
        for (int i = 0; i < child_bs->quiesce_counter; i++) {
            klass->drained_begin(c);
        }
        c->parent_quiesced = true;
    }
    ChildLinkUndo *u = g_new0(ChildLinkUndo, 1);
    u->c = c;
    txn_add(txn, &child_add_drv, u);
    return c;
}

static void child_remove_abort(void *opaque)
{
    ChildLinkUndo *u = opaque;
    child_link(u->c, u->parent_index, u->child_index);
    if (u->was_file) {
        ((BlockNode *)u->c->opaque)->file = u->c;
    }
    if (u->was_backing) {
        ((BlockNode *)u->c->opaque)->backing = u->c;
    }
}

static void child_remove_commit(void *opaque)
{
    ChildLinkUndo *u = opaque;
    BlockChild *c = u->c;
    BlockNode *bs = c->bs;
    if (c->parent_quiesced && c->klass->drained_end) {
        for (int i = 0; i < bs->quiesce_counter; i++) {
            c->klass->drained_end(c);
        }
    }
    child_free(c);
    node_unref(bs);
}

static const TxnActionDrv child_remove_drv = {
    .commit = child_remove_commit,
    .abort = child_remove_abort,
    .clean = child_undo_free,
};

void child_remove_noperm(BlockChild *c, Txn *txn)
{
    ChildLinkUndo *u = g_new0(ChildLinkUndo, 1);
    u->c = c;
    if (c->klass->parent_is_node) {
        u->was_file = ((BlockNode *)c->opaque)->file == c;
        u->was_backing = ((BlockNode *)c->opaque)->backing == c;
    }
    child_unlink(c, &u->parent_index, &u->child_index);
    txn_add(txn, &child_remove_drv, u);
}

typedef struct {
    BlockChild *c;
    BlockNode *old_bs;
    int old_index;
} ChildRetargetUndo;

/*
 * A non-node parent moved from one node to another must be as drained as
 * its new node is: begin or end the difference.
 */
static void child_move_drain(BlockChild *c, BlockNode *from, BlockNode *to)
{
    if (c->klass->parent_is_node) {
        return;
    }
    int delta = to->quiesce_counter - from->quiesce_counter;
    for (; delta > 0; delta--) {
        if (c->klass->drained_begin) {
            c->klass->drained_begin(c);
        }
        c->parent_quiesced = true;
    }
    for (; delta < 0; delta++) {
        if (c->klass->drained_end) {
            c->klass->drained_end(c);
        }
    }
}

static void child_retarget_abort(void *opaque)
{
    ChildRetargetUndo *u = opaque;
    BlockNode *new_bs = u->c->bs;
    child_move_drain(u->c, new_bs, u->old_bs);
    new_bs->parents = g_list_remove(new_bs->parents, u->c);
    u->c->bs = u->old_bs;
    u->old_bs->parents = g_list_insert(u->old_bs->parents, u->c, u->old_index);
    node_unref(new_bs);
}

static void child_retarget_commit(void *opaque)
{
    ChildRetargetUndo *u = opaque;
    node_unref(u->old_bs);
}

static const TxnActionDrv child_retarget_drv = {
    .commit = child_retarget_commit,
    .abort = child_retarget_abort,
    .clean = child_undo_free,
};

void child_set_node_noperm(BlockChild *c, BlockNode *new_bs, Txn *txn)
{
    ChildRetargetUndo *u = g_new0(ChildRetargetUndo, 1);
    u->c = c;
    u->old_bs = c->bs;
    u->old_index = g_list_index(c->bs->parents, c);
    c->bs->parents = g_list_remove(c->bs->parents, c);
    node_ref(new_bs);
    c->bs = new_bs;
    new_bs->parents = g_list_append(new_bs->parents, c);
    child_move_drain(c, u->old_bs, new_bs);
    txn_add(txn, &child_retarget_drv, u);
}

typedef struct {
    BlockChild *c;
    uint64_t perm, shared;
} ChildPermUndo;

static void child_perm_abort(void *opaque)
{
    ChildPermUndo *u = opaque;
    u->c->perm = u->perm;
    u->c->shared = u->shared;
}

static const TxnActionDrv child_perm_drv = {
    .abort = child_perm_abort,
    .clean = child_undo_free,
};

void child_set_perm_noperm(BlockChild *c, uint64_t perm, uint64_t shared,
                           Txn *txn)
{
    ChildPermUndo *u = g_new(ChildPermUndo, 1);
    u->c = c;
    u->perm = c->perm;
    u->shared = c->shared;
    c->perm = perm;
    c->shared = shared;
    txn_add(txn, &child_perm_drv, u);
}

static void child_final_clear(void *opaque)
{
    BlockChild *c = opaque;
    c->has_final = false;
}

static const TxnActionDrv child_final_drv = {
    .clean = child_final_clear,
};

void child_set_final_noperm(BlockChild *c, uint64_t perm, uint64_t shared,
                            Txn *txn)
{
    if (!c->has_final) {
        txn_add(txn, &child_final_drv, c);
    }
    c->final_perm = perm;
    c->final_shared = shared;
    c->has_final = true;
}

/* ---- Public edits ---- */

static bool finish(Txn *txn, GSList *refresh, GError **errp)
{
    bool ok = perm_refresh_nodes(refresh, txn, false, errp);
    g_slist_free(refresh);
    if (ok) {
        txn_commit(txn);
    } else {
        txn_abort(txn);
    }
    return ok;
}

BlockChild *child_attach(BlockNode *child_bs, const char *name,
                         const BlockChildClass *klass, unsigned role,
                         uint64_t perm, uint64_t shared, void *opaque,
                         GError **errp)
{
    Txn *txn = txn_new();
    BlockChild *c = child_new_noperm(child_bs, name, klass, role, perm, shared,
                                     opaque, txn);
    if (!finish(txn, g_slist_prepend(NULL, child_bs), errp)) {
        return NULL;
    }
    return c;
}

BlockChild *node_attach_child(BlockNode *parent, BlockNode *child_bs,
                              const char *name, unsigned role, GError **errp)
{
    /* A node below itself would make every walk of the graph loop. */
    for (BlockNode *n = child_bs; n; n = NULL) {
        GSList *stack = g_slist_prepend(NULL, n);
        while (stack) {
            BlockNode *cur = stack->data;
            stack = g_slist_delete_link(stack, stack);
            if (cur == parent) {
                g_slist_free(stack);
                error_setg(errp, "Making '%s' a %s child of '%s' would create "
                           "a cycle", child_bs->node_name, name,
                           parent->node_name);
                return NULL;
            }
            for (GList *l = cur->children; l; l = l->next) {
                stack = g_slist_prepend(stack, ((BlockChild *)l->data)->bs);
            }
        }
    }
    if (!node_join_loop(parent, child_bs, errp)) {
        return NULL;
    }
    Txn *txn = txn_new();
    BlockChild *c = child_new_noperm(child_bs, name, &child_of_node, role, 0,
                                     BLK_PERM_ALL, parent, txn);
    /* Refreshing from the parent computes the edge's permissions. */
    if (!finish(txn, g_slist_prepend(NULL, parent), errp)) {
        return NULL;
    }
    if (!strcmp(name, "file") && !parent->file) {
        parent->file = c;
    } else if (!strcmp(name, "backing") && !parent->backing) {
        parent->backing = c;
    }
    return c;
}

bool child_detach(BlockChild *c, GError **errp)
{
    if (!child_check_not_frozen(c, "detach", errp)) {
        return false;
    }
    BlockNode *bs = c->bs;
    node_ref(bs);
    Txn *txn = txn_new();
    child_remove_noperm(c, txn);
    /*
     * Dropping an edge only relaxes permissions; protocol errors while
     * relaxing (unlocking) are ignored, so detaching cannot fail here.
     */
    GSList *l = g_slist_prepend(NULL, bs);
    perm_refresh_nodes(l, txn, true, NULL);
    g_slist_free(l);
    txn_commit(txn);
    node_unref(bs);
    return true;
}

bool child_set_perm(BlockChild *c, uint64_t perm, uint64_t shared,
                    GError **errp)
{
    Txn *txn = txn_new();
    child_set_perm_noperm(c, perm, shared, txn);
    return finish(txn, g_slist_prepend(NULL, c->bs), errp);
}

bool child_replace_node(BlockChild *c, BlockNode *new_bs, GError **errp)
{
    if (c->bs == new_bs) {
        return true;
    }
    if (!child_check_not_frozen(c, "replace", errp)) {
        return false;
    }
    if (!node_set_loop(new_bs, node_loop(c->bs), errp)) {
        return false;
    }
    BlockNode *old_bs = c->bs;
    node_ref(old_bs);
    Txn *txn = txn_new();
    child_set_node_noperm(c, new_bs, txn);
    GSList *l = g_slist_prepend(NULL, old_bs);
    l = g_slist_prepend(l, new_bs);
    bool ok = finish(txn, l, errp);
    node_unref(old_bs);
    return ok;
}

static bool node_in_subtree(BlockNode *root, BlockNode *bs)
{
    if (root == bs) {
        return true;
    }
    for (GList *l = root->children; l; l = l->next) {
        if (node_in_subtree(((BlockChild *)l->data)->bs, bs)) {
            return true;
        }
    }
    return false;
}

bool node_replace(BlockNode *from, BlockNode *to, GError **errp)
{
    /* from's parents stay in their loop: to comes to it. */
    if (!node_set_loop(to, node_loop(from), errp)) {
        return false;
    }
    node_ref(from);
    Txn *txn = txn_new();
    GList *parents = g_list_copy(from->parents);
    bool ok = true;
    for (GList *l = parents; l; l = l->next) {
        BlockChild *c = l->data;
        /* Edges from inside `to` (e.g. to's backing link to `from`) stay. */
        if (c->klass->parent_is_node && node_in_subtree(to, c->opaque)) {
            continue;
        }
        if (!child_check_not_frozen(c, "replace", errp)) {
            ok = false;
            break;
        }
        child_set_node_noperm(c, to, txn);
    }
    g_list_free(parents);
    if (ok) {
        GSList *l = g_slist_prepend(NULL, from);
        l = g_slist_prepend(l, to);
        ok = finish(txn, l, errp);
    } else {
        txn_abort(txn);
    }
    node_unref(from);
    return ok;
}

/* ---- Accessors ---- */

BlockNode *child_node(const BlockChild *c)
{
    return c->bs;
}

const char *child_name(const BlockChild *c)
{
    return c->name;
}

void child_get_perm(const BlockChild *c, uint64_t *perm, uint64_t *shared)
{
    *perm = c->perm;
    *shared = c->shared;
}

BlockChild *node_next_child(BlockNode *bs, BlockChild *prev)
{
    GList *l = prev ? g_list_find(bs->children, prev) : NULL;
    l = prev ? (l ? l->next : NULL) : bs->children;
    return l ? l->data : NULL;
}

BlockChild *node_next_parent(BlockNode *bs, BlockChild *prev)
{
    GList *l = prev ? g_list_find(bs->parents, prev) : NULL;
    l = prev ? (l ? l->next : NULL) : bs->parents;
    return l ? l->data : NULL;
}

BlockChild *node_find_child(BlockNode *bs, const char *name)
{
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (!strcmp(c->name, name)) {
            return c;
        }
    }
    return NULL;
}
