/*
 * Freeze counters (seed 002's replacement for QEMU's GRAPH_MOD).
 *
 * Any party, parent or not, may freeze an edge: a commit job freezes the
 * backing links of the chain it works on, a user may freeze a link by hand.
 * While an edge is frozen it cannot be detached or pointed at another node.
 * The counter is the number of owners recorded; each owner's name is kept
 * so that the error can say who holds the freeze.
 */
#include <string.h>
#include "block-int.h"

void child_freeze(BlockChild *c, const char *owner)
{
    if (!c->freezers) {
        c->freezers = g_ptr_array_new_with_free_func(g_free);
    }
    g_ptr_array_add(c->freezers, g_strdup(owner ? owner : "an unnamed user"));
}

void child_unfreeze(BlockChild *c, const char *owner)
{
    g_return_if_fail(c->freezers && c->freezers->len > 0);
    const char *o = owner ? owner : "an unnamed user";
    for (guint i = c->freezers->len; i-- > 0;) {
        if (!strcmp(g_ptr_array_index(c->freezers, i), o)) {
            g_ptr_array_remove_index(c->freezers, i);
            return;
        }
    }
    g_critical("unfreeze of '%s' by '%s', which did not freeze it", c->name, o);
}

int child_frozen_count(const BlockChild *c)
{
    return c->freezers ? (int)c->freezers->len : 0;
}

bool child_check_not_frozen(const BlockChild *c, const char *action,
                            GError **errp)
{
    if (child_frozen_count(c) == 0) {
        return true;
    }
    char *parent = child_parent_desc(c);
    error_setg(errp, "Cannot %s the '%s' link from %s to node '%s': it is "
               "frozen by %s", action, c->name, parent, c->bs->node_name,
               (const char *)g_ptr_array_index(c->freezers, c->freezers->len - 1));
    g_free(parent);
    return false;
}

BlockChild *chain_child(BlockNode *bs)
{
    if (bs->backing) {
        return bs->backing;
    }
    for (GList *l = bs->children; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->role & CHILD_ROLE_FILTERED) {
            return c;
        }
    }
    return NULL;
}

bool chain_freeze(BlockNode *top, BlockNode *base, const char *owner,
                  GError **errp)
{
    /* Check the whole chain first: freezing is all or nothing. */
    BlockNode *bs = top;
    while (bs != base) {
        BlockChild *c = chain_child(bs);
        if (!c) {
            if (base) {
                error_setg(errp, "'%s' is not in the backing chain of '%s'",
                           base->node_name, top->node_name);
                return false;
            }
            break;
        }
        if (c->bs->drv->never_freeze) {
            error_setg(errp, "Cannot freeze '%s' link to '%s'", c->name,
                       c->bs->node_name);
            return false;
        }
        bs = c->bs;
    }
    for (bs = top; bs != base;) {
        BlockChild *c = chain_child(bs);
        if (!c) {
            break;
        }
        child_freeze(c, owner);
        bs = c->bs;
    }
    return true;
}

void chain_unfreeze(BlockNode *top, BlockNode *base, const char *owner)
{
    for (BlockNode *bs = top; bs != base;) {
        BlockChild *c = chain_child(bs);
        if (!c) {
            break;
        }
        child_unfreeze(c, owner);
        bs = c->bs;
    }
}
