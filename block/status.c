/*
 * Block status: what is at a range (data, zeroes, where it lives) and
 * whether a node or a chain allocates it.
 *
 * The rules are QEMU 7.2's, because qemu-img map, qemu-io map/alloc and
 * (later) NBD block status print what they return:
 *
 * - node_co_block_status() asks one node.  Its driver answers for the
 *   range rounded out to the node's request alignment; a driver without
 *   co_block_status is all data (a filter without one passes the question
 *   to its child).  BLOCK_RAW hands the question to the node holding the
 *   data.  DATA or ZERO from the driver means the node allocates the range.
 *   A range a backing-capable node does not allocate still reads as zeroes
 *   when there is no backing file, or (want_zero) when it starts at or past
 *   the end of the backing file: BLOCK_ZERO without BLOCK_ALLOCATED.
 *   BLOCK_RECURSE lets the protocol node below refine data into zeroes (a
 *   hole, or past its end).  BLOCK_EOF: the answer reaches the node's end.
 *
 * - node_co_block_status_above() walks a chain from top towards base
 *   (backing files and filtered children) and returns the answer of the
 *   first node that allocates the range, with *pnum never growing past what
 *   an upper layer said.  A layer shorter than the range start reads as
 *   zeroes "allocated" at that layer.  BLOCK_EOF is only reported for the
 *   top node's end.
 */
#include <errno.h>
#include <string.h>
#include "block-int.h"

/* The node below bs in its chain: a filter's child, or the backing file. */
static BlockNode *chain_next(BlockNode *bs)
{
    BlockNode *filtered = node_filtered_child(bs);

    if (filtered) {
        return filtered;
    }
    return bs->backing ? bs->backing->bs : NULL;
}

/*
 * Rules applied after the driver answered for [offset, offset + *pnum):
 * allocation, zeroes inherited from a missing or short backing file, and
 * zeroes the protocol node knows about.
 */
static int coroutine_fn refine_status(BlockNode *bs, bool want_zero,
                                      int64_t offset, int ret, int64_t *pnum,
                                      int64_t local_map,
                                      BlockNode *local_file)
{
    if (ret & (BLOCK_DATA | BLOCK_ZERO)) {
        ret |= BLOCK_ALLOCATED;
    } else if (bs->drv->supports_backing) {
        if (!bs->backing) {
            ret |= BLOCK_ZERO;
        } else if (want_zero) {
            int64_t backing_len = node_getlength(bs->backing->bs);

            if (backing_len >= 0 && offset >= backing_len) {
                ret |= BLOCK_ZERO;
            }
        }
    }

    if (want_zero && (ret & BLOCK_RECURSE) && local_file &&
        local_file != bs && (ret & BLOCK_DATA) && !(ret & BLOCK_ZERO) &&
        (ret & BLOCK_OFFSET_VALID)) {
        int64_t file_pnum;
        int ret2 = node_co_block_status(local_file, true, local_map, *pnum,
                                        &file_pnum, NULL, NULL);

        /* Only extra information: an error here is not the caller's. */
        if (ret2 >= 0) {
            if ((ret2 & BLOCK_EOF) && (!file_pnum || (ret2 & BLOCK_ZERO))) {
                /* A format may map data past the end of its file: zeroes. */
                ret |= BLOCK_ZERO;
            } else {
                *pnum = file_pnum;
                ret |= ret2 & BLOCK_ZERO;
            }
        }
    }
    return ret;
}

int coroutine_fn node_co_block_status(BlockNode *bs, bool want_zero,
                                      int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map,
                                      BlockNode **file)
{
    int64_t len, local_map = 0, aligned_offset, aligned_bytes, head;
    BlockNode *local_file = NULL, *filtered;
    uint32_t align;
    int ret;

    *pnum = 0;
    len = node_getlength(bs);
    if (len < 0) {
        return (int)len;
    }
    if (offset < 0 || bytes < 0) {
        return -EINVAL;
    }
    if (offset >= len) {
        ret = BLOCK_EOF;
        goto early_out;
    }
    if (bytes == 0) {
        ret = 0;
        goto early_out;
    }
    bytes = MIN(bytes, len - offset);

    filtered = node_filtered_child(bs);
    if (!bs->drv->co_block_status && !filtered) {
        *pnum = bytes;
        ret = BLOCK_DATA | BLOCK_ALLOCATED;
        if (offset + bytes == len) {
            ret |= BLOCK_EOF;
        }
        if (bs->drv->protocol_name && !bs->children) {
            ret |= BLOCK_OFFSET_VALID;
            local_map = offset;
            local_file = bs;
        }
        goto early_out;
    }

    node_inc_in_flight(bs);
    /* Drivers answer for whole blocks of their request alignment. */
    align = MAX(bs->bl.request_alignment, 1u);
    aligned_offset = ROUND_DOWN(offset, (int64_t)align);
    aligned_bytes = ROUND_UP(offset + bytes, (int64_t)align) - aligned_offset;
    head = offset - aligned_offset;

    if (bs->drv->co_block_status) {
        ret = bs->drv->co_block_status(bs, want_zero, aligned_offset,
                                       aligned_bytes, pnum, &local_map,
                                       &local_file);
    } else {
        /* A filter without its own answer: its child's data is its own. */
        local_file = filtered;
        local_map = aligned_offset;
        *pnum = aligned_bytes;
        ret = BLOCK_RAW | BLOCK_OFFSET_VALID;
    }
    if (ret < 0) {
        *pnum = 0;
        goto out;
    }
    if (*pnum <= head ||
        ((ret & BLOCK_RAW) && (!(ret & BLOCK_OFFSET_VALID) || !local_file))) {
        /* A driver that answers for nothing would loop its callers. */
        *pnum = 0;
        ret = -EIO;
        goto out;
    }
    *pnum = MIN(*pnum - head, bytes);
    if (ret & BLOCK_OFFSET_VALID) {
        local_map += head;
    }

    if (ret & BLOCK_RAW) {
        ret = node_co_block_status(local_file, want_zero, local_map, *pnum,
                                   pnum, &local_map, &local_file);
        if (ret >= 0) {
            /* The end of the node below is not ours: decided below. */
            ret &= ~BLOCK_EOF;
        }
    } else {
        ret = refine_status(bs, want_zero, offset, ret, pnum, local_map,
                            local_file);
    }

out:
    node_dec_in_flight(bs);
    if (ret < 0) {
        return ret;
    }
    ret &= ~BLOCK_RECURSE;
    if (offset + *pnum == len) {
        ret |= BLOCK_EOF;
    }
early_out:
    if (map) {
        *map = local_map;
    }
    if (file) {
        *file = local_file;
    }
    return ret;
}

typedef struct StatusCall {
    enum { STATUS_ONE, STATUS_ABOVE, ALLOC_ONE, ALLOC_ABOVE } kind;
    BlockNode *bs, *base;
    bool include_base, want_zero;
    int64_t offset, bytes, *pnum, *map;
    BlockNode **file;
    int *depth;
    int ret;
} StatusCall;

static void coroutine_fn status_call_co(void *opaque);

static int coroutine_fn status_above_here(BlockNode *bs, BlockNode *base,
                                          bool include_base, bool want_zero,
                                          int64_t offset, int64_t bytes,
                                          int64_t *pnum, int64_t *map,
                                          BlockNode **file, int *depth);

/*
 * The one coroutine entry that callers outside block/ use on a node
 * without a backend (an NBD export's block status): it goes to the
 * node's loop when the caller runs in another.
 */
int coroutine_fn node_co_block_status_above(BlockNode *bs, BlockNode *base,
                                            bool include_base, bool want_zero,
                                            int64_t offset, int64_t bytes,
                                            int64_t *pnum, int64_t *map,
                                            BlockNode **file, int *depth)
{
    StrataLoop *home = node_loop(bs);
    if (home != loop_get()) {
        StatusCall c = { .kind = STATUS_ABOVE, .bs = bs, .base = base,
                         .include_base = include_base,
                         .want_zero = want_zero, .offset = offset,
                         .bytes = bytes, .pnum = pnum, .map = map,
                         .file = file, .depth = depth };
        node_co_call(bs, status_call_co, &c);
        return c.ret;
    }
    return status_above_here(bs, base, include_base, want_zero, offset,
                             bytes, pnum, map, file, depth);
}

static int coroutine_fn status_above_here(BlockNode *bs, BlockNode *base,
                                          bool include_base, bool want_zero,
                                          int64_t offset, int64_t bytes,
                                          int64_t *pnum, int64_t *map,
                                          BlockNode **file, int *depth)
{
    int64_t eof = 0;
    int dummy, ret;

    if (!base) {
        /* There is no NULL node to include: the whole chain is asked. */
        include_base = false;
    }
    if (!depth) {
        depth = &dummy;
    }
    *depth = 0;
    if (!include_base && bs == base) {
        *pnum = bytes;
        return 0;
    }

    ret = node_co_block_status(bs, want_zero, offset, bytes, pnum, map, file);
    ++*depth;
    if (ret < 0 || *pnum == 0 || (ret & BLOCK_ALLOCATED) || bs == base) {
        return ret;
    }
    if (ret & BLOCK_EOF) {
        eof = offset + *pnum;
    }
    bytes = *pnum;

    for (BlockNode *p = chain_next(bs); p && (include_base || p != base);
         p = chain_next(p)) {
        ret = node_co_block_status(p, want_zero, offset, bytes, pnum, map,
                                   file);
        ++*depth;
        if (ret < 0) {
            return ret;
        }
        if (*pnum == 0) {
            /*
             * The layers above left the range to this one, which ends
             * before it: it reads as zeroes, as if this layer held them.
             */
            *pnum = bytes;
            if (file) {
                *file = p;
            }
            ret = BLOCK_ZERO | BLOCK_ALLOCATED;
            break;
        }
        if (ret & BLOCK_ALLOCATED) {
            /* This layer's end is not the top's: decided below. */
            ret &= ~BLOCK_EOF;
            break;
        }
        if (p == base) {
            break;
        }
        bytes = *pnum;
    }

    if (offset + *pnum == eof) {
        ret |= BLOCK_EOF;
    }
    return ret;
}

int coroutine_fn node_co_is_allocated(BlockNode *bs, int64_t offset,
                                      int64_t bytes, int64_t *pnum)
{
    int64_t n;
    int ret = node_co_block_status_above(bs, bs, true, false, offset, bytes,
                                         &n, NULL, NULL, NULL);
    if (ret < 0) {
        return ret;
    }
    *pnum = n;
    return !!(ret & BLOCK_ALLOCATED);
}

int coroutine_fn node_co_is_allocated_above(BlockNode *top, BlockNode *base,
                                            bool include_base, int64_t offset,
                                            int64_t bytes, int64_t *pnum)
{
    int ret = node_co_block_status_above(top, base, include_base, false,
                                         offset, bytes, pnum, NULL, NULL,
                                         NULL);
    if (ret < 0) {
        return ret;
    }
    return !!(ret & BLOCK_ALLOCATED);
}

/* ---- Synchronous forms (strata/block-ops.h) ---- */


static void coroutine_fn status_call_co(void *opaque)
{
    StatusCall *c = opaque;

    switch (c->kind) {
    case STATUS_ONE:
        c->ret = node_co_block_status(c->bs, c->want_zero, c->offset,
                                      c->bytes, c->pnum, c->map, c->file);
        break;
    case STATUS_ABOVE:
        c->ret = node_co_block_status_above(c->bs, c->base, c->include_base,
                                            c->want_zero, c->offset, c->bytes,
                                            c->pnum, c->map, c->file,
                                            c->depth);
        break;
    case ALLOC_ONE:
        c->ret = node_co_is_allocated(c->bs, c->offset, c->bytes, c->pnum);
        break;
    case ALLOC_ABOVE:
        c->ret = node_co_is_allocated_above(c->bs, c->base, c->include_base,
                                            c->offset, c->bytes, c->pnum);
        break;
    }
}

int node_block_status(BlockNode *bs, bool want_zero, int64_t offset,
                      int64_t bytes, int64_t *pnum, int64_t *map,
                      BlockNode **file)
{
    StatusCall c = { .kind = STATUS_ONE, .bs = bs, .want_zero = want_zero,
                     .offset = offset, .bytes = bytes, .pnum = pnum,
                     .map = map, .file = file };

    block_co_call(c.bs, status_call_co, &c);
    return c.ret;
}

int node_block_status_above(BlockNode *bs, BlockNode *base,
                            bool include_base, bool want_zero,
                            int64_t offset, int64_t bytes, int64_t *pnum,
                            int64_t *map, BlockNode **file, int *depth)
{
    StatusCall c = { .kind = STATUS_ABOVE, .bs = bs, .base = base,
                     .include_base = include_base, .want_zero = want_zero,
                     .offset = offset, .bytes = bytes, .pnum = pnum,
                     .map = map, .file = file, .depth = depth };

    block_co_call(c.bs, status_call_co, &c);
    return c.ret;
}

int node_is_allocated(BlockNode *bs, int64_t offset, int64_t bytes,
                      int64_t *pnum)
{
    StatusCall c = { .kind = ALLOC_ONE, .bs = bs, .offset = offset,
                     .bytes = bytes, .pnum = pnum };

    block_co_call(c.bs, status_call_co, &c);
    return c.ret;
}

int node_is_allocated_above(BlockNode *top, BlockNode *base,
                            bool include_base, int64_t offset, int64_t bytes,
                            int64_t *pnum)
{
    StatusCall c = { .kind = ALLOC_ABOVE, .bs = top, .base = base,
                     .include_base = include_base, .offset = offset,
                     .bytes = bytes, .pnum = pnum };

    block_co_call(c.bs, status_call_co, &c);
    return c.ret;
}
