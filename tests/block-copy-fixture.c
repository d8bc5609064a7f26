/*
 * The copy engine tests' shared fixtures (see block-copy-fixture.h).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <glib.h>

#include "strata/units.h"
#include "block-copy-fixture.h"

BlockCopyState *new_copy(BlockCopyOptions *o)
{
    GError *err = NULL;
    BlockCopyState *s = block_copy_new(o, &err);
    if (!s) {
        fail_msg("block_copy_new: %s", err->message);
    }
    return s;
}

void copy_close(BlockCopyState *s, Edges *e, BlockNode *src, BlockNode *dst)
{
    block_copy_free(s);
    blk_unref(e->src);
    blk_unref(e->dst);
    node_unref(src);
    node_unref(dst);
}

void run_co(void *opaque)
{
    Run *r = opaque;
    r->ret = block_copy_run(r->s, r->job, &r->is_read);
    r->done = true;
}

void range_co(void *opaque)
{
    Run *r = opaque;
    r->ret = block_copy_range(r->s, r->offset, r->bytes, &r->is_read);
    r->done = true;
}

int run_sync(BlockCopyState *s, bool *is_read)
{
    Run r = { .s = s };
    co_run_sync(run_co, &r);
    if (is_read) {
        *is_read = r.is_read;
    }
    return r.ret;
}

void on_progress(void *opaque, int64_t offset, int64_t bytes,
                 BlockCopyKind kind)
{
    Seen *seen = opaque;
    seen->bytes[kind] += bytes;
    if (seen->per_granule) {
        for (int64_t g = offset / GRAN; g < DIV_ROUND_UP(offset + bytes, GRAN);
             g++) {
            assert_true(g < seen->granules);
            seen->per_granule[g]++;
        }
    }
}

void gate_init(Gate *g, int64_t from)
{
    *g = (Gate) { .from = from };
    co_queue_init(&g->q);
}

void gate_open(Gate *g)
{
    g->open = true;
    co_queue_restart_all(&g->q);
}

int coroutine_fn gated_classify(void *opaque, int64_t offset, int64_t bytes,
                                int64_t *pnum)
{
    Gate *g = opaque;
    if (offset < g->skip_below) {
        *pnum = MIN(bytes, g->skip_below - offset);
        return BLOCK_COPY_SKIP;
    }
    if (offset >= g->from && !g->open) {
        g->waiting++;
        co_queue_wait(&g->q);
        g->waiting--;
    }
    *pnum = bytes;
    return BLOCK_COPY_DATA;
}

int coroutine_fn all_data(void *opaque, int64_t offset, int64_t bytes,
                          int64_t *pnum)
{
    (void)opaque;
    (void)offset;
    *pnum = bytes;
    return BLOCK_COPY_DATA;
}
