/*
 * x-strata-discard-source's checks and reopens (jobs/discard-source.h).
 */
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "discard-source.h"

bool discard_source_check_users(BlockNode *it, BlockNode *above,
                                BlockChild *edge, GError **errp)
{
    for (BlockChild *c = node_next_parent(it, NULL); c;
         c = node_next_parent(it, c)) {
        if (c == edge || (child_parent_kind(c) == PARENT_NODE &&
                          child_parent(c) == above)) {
            continue;
        }
        char *who = child_parent_desc(c);
        error_setg(errp, "Parameter 'x-strata-discard-source' needs the "
                   "image '%s' to have no other users than the job, but %s "
                   "uses it", node_get_name(it), who);
        g_free(who);
        return false;
    }
    return true;
}

bool discard_source_prepare(BlockNode *it, GPtrArray *reopened,
                            GError **errp)
{
    if (!node_can_unallocate(it)) {
        error_setg(errp, "Parameter 'x-strata-discard-source': format '%s' "
                   "of node '%s' cannot make ranges unallocated",
                   node_get_format_name(it), node_get_name(it));
        return false;
    }
    if (node_is_read_only(it)) {
        /*
         * Held first: the reopen drains, and the loop runs there, where a
         * job's completion may drop it from the chain; the reopen queue's
         * reference goes when the reopen returns.
         */
        node_ref(it);
        if (!node_reopen(it, NULL, false, errp)) {
            node_unref(it);
            return false;
        }
        g_ptr_array_add(reopened, it);
    }
    return true;
}

void discard_source_restore(GPtrArray *reopened)
{
    for (guint i = 0; i < reopened->len; i++) {
        BlockNode *bs = g_ptr_array_index(reopened, i);
        node_reopen(bs, NULL, true, NULL);
        node_unref(bs);
    }
    g_ptr_array_set_size(reopened, 0);
}
