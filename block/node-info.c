/*
 * What a node's driver says about its image (cluster size, VM state
 * offset, dirty flag), for the tools and for drivers that size their
 * requests from a child's format.
 */
#include <errno.h>
#include <string.h>
#include "strata/block-driver.h"

int node_get_info(BlockNode *bs, BlockDriverInfo *bdi)
{
    memset(bdi, 0, sizeof(*bdi));
    if (!bs->drv) {
        return -ENOMEDIUM;
    }
    if (!bs->drv->get_info) {
        /* A filter shows its child's image; anything else cannot tell. */
        BlockNode *child = node_filtered_child(bs);
        return child ? node_get_info(child, bdi) : -ENOTSUP;
    }
    return bs->drv->get_info(bs, bdi);
}
