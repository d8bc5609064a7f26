/* See node-loop.h. */
#include "strata/backend.h"
#include "strata/block.h"
#include "strata/error.h"
#include "node-loop.h"

bool node_loop_check(const char *node_name, bool force, GError **errp)
{
    BlockNode *bs = node_find(node_name);

    if (!bs) {
        error_setg(errp, "Failed to find node with node-name='%s'",
                   node_name);
        return false;
    }
    if (!force && node_has_backend(bs)) {
        error_setg(errp, "Node %s is associated with a BlockBackend and "
                   "could be in use (use force=true to override this check)",
                   node_name);
        return false;
    }
    return true;
}
