/*
 * Block status: what is at a range (data, zeroes, where it lives) and
 * whether a node or a chain allocates it.
 */
#include <errno.h>
#include "block-int.h"

int coroutine_fn node_co_block_status(BlockNode *bs, bool want_zero,
                                      int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map,
                                      BlockNode **file)
{
    int64_t len = node_getlength(bs);
    int64_t local_map = 0;
    BlockNode *local_file = NULL;
    int ret;

    if (len < 0) {
        return (int)len;
    }
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    if (offset >= len) {
        *pnum = 0;
        return BLOCK_EOF;
    }
    bytes = MIN(bytes, len - offset);
    if (bytes == 0) {
        *pnum = 0;
        return 0;
    }

    node_inc_in_flight(bs);
    if (!bs->drv->co_block_status) {
        *pnum = bytes;
        ret = BLOCK_DATA | BLOCK_ALLOCATED;
        if (bs->drv->protocol_name && !bs->children) {
            ret |= BLOCK_OFFSET_VALID;
            local_map = offset;
            local_file = bs;
        }
    } else {
        ret = bs->drv->co_block_status(bs, want_zero, offset, bytes, pnum,
                                       &local_map, &local_file);
        if (ret >= 0 && *pnum > bytes) {
            *pnum = bytes;
        }
        if (ret >= 0 && (ret & BLOCK_RAW)) {
            /* The driver passes the question to the node holding the data. */
            g_assert(local_file);
            int64_t n = *pnum;
            ret = node_co_block_status(local_file, want_zero, local_map, n,
                                       pnum, &local_map, &local_file);
            if (ret >= 0) {
                ret &= ~BLOCK_EOF;
            }
        } else if (ret >= 0 && want_zero && (ret & BLOCK_RECURSE) &&
                   (ret & BLOCK_OFFSET_VALID) && local_file &&
                   local_file != bs) {
            /* Data the format maps may still read as zeroes below. */
            int64_t n2;
            int64_t m2;
            BlockNode *f2;
            int r2 = node_co_block_status(local_file, true, local_map, *pnum,
                                          &n2, &m2, &f2);
            if (r2 >= 0 && (r2 & BLOCK_ZERO) && n2 > 0) {
                ret |= BLOCK_ZERO;
                *pnum = n2;
            }
            ret &= ~BLOCK_RECURSE;
        }
    }
    if (ret >= 0) {
        ret &= ~BLOCK_RECURSE;
        if (ret & (BLOCK_DATA | BLOCK_ZERO)) {
            ret |= BLOCK_ALLOCATED;
        }
        if (offset + *pnum == len) {
            ret |= BLOCK_EOF;
        }
        if (map) {
            *map = local_map;
        }
        if (file) {
            *file = local_file;
        }
    }
    node_dec_in_flight(bs);
    return ret;
}

int coroutine_fn node_co_is_allocated(BlockNode *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum)
{
    int64_t n;
    int ret = node_co_block_status(bs, false, offset, bytes, &n, NULL, NULL);
    if (ret < 0) {
        return ret;
    }
    *pnum = n;
    return !!(ret & BLOCK_ALLOCATED);
}

/* The node below bs in its chain: the backing file, or a filter's child. */
static BlockNode *chain_next(BlockNode *bs)
{
    if (bs->backing) {
        return bs->backing->bs;
    }
    return node_filtered_child(bs);
}

int coroutine_fn node_co_is_allocated_above(BlockNode *top, BlockNode *base,
                                            bool include_base, int64_t offset,
                                            int64_t bytes, int64_t *pnum)
{
    int64_t n = bytes;
    bool first = true;
    for (BlockNode *p = top; p; p = chain_next(p)) {
        if (p == base && !include_base) {
            break;
        }
        int64_t pn;
        int ret = node_co_is_allocated(p, offset, n, &pn);
        if (ret < 0) {
            return ret;
        }
        if (ret) {
            *pnum = pn;
            return 1;
        }
        /* Past the end of a shorter intermediate node nothing is allocated. */
        if (pn > 0 || first) {
            n = pn > 0 ? pn : n;
        }
        first = false;
        if (p == base) {
            break;
        }
    }
    *pnum = n;
    return 0;
}
