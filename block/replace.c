/*
 * Which node a mirror may replace at completion (QEMU's
 * bdrv_recurse_can_replace).  Walking down from the mirror's source: the
 * source itself, anything a filter passes through unchanged, and what a
 * driver vouches for (quorum: a child only it uses).
 */
#include "strata/block-driver.h"

bool node_recurse_can_replace(BlockNode *bs, BlockNode *to_replace)
{
    BlockNode *filtered;

    if (!bs || !bs->drv) {
        return false;
    }
    if (bs == to_replace) {
        return true;
    }
    if (bs->drv->recurse_can_replace) {
        return bs->drv->recurse_can_replace(bs, to_replace);
    }
    filtered = bs->drv->is_filter ? node_filtered_child(bs) : NULL;
    return filtered && node_recurse_can_replace(filtered, to_replace);
}
