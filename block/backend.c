/*
 * BlockBackend: a user's handle on a node.
 *
 * The backend is the parent of its root edge: it takes and shares the
 * permissions its user needs, checks request ranges against the node's
 * length, holds back new requests while the node is drained (they wait in
 * a queue and start when the drain ends), and counts its requests in
 * flight so that drain can wait for them.
 *
 * Threads.  A backend's user may run in any thread (an export in an
 * iothread, a job in the main loop); the node may run in another.  The
 * hold-off and the counting happen in the user's thread; the request
 * itself runs in the node's loop (co_call_in), so a node is entered only
 * from its own thread.  The main thread's drain reads the counters, so
 * they are atomic, and the check of quiesce_counter after raising
 * in_flight pairs with drain raising quiesce_counter before it looks at
 * in_flight: one of the two always sees the other.
 */
#include <errno.h>
#include "block-int.h"
#include "strata/block-events.h"
#include "strata/trace.h"

struct BlockBackend {
    BlockChild *root;
    char *name;
    uint64_t perm, shared;
    bool wce;
    bool allow_write_beyond_eof;
    bool report_io_errors;
    int quiesce_counter;    /* atomic */
    int in_flight;          /* atomic */
    int queued_count;   /* requests waiting in `queued` (not in flight) */
    CoQueue queued;
    StrataLoop *queued_loop;    /* the thread whose coroutines wait there */
    /* Moving with the node (node_set_loop): see blk_set_loop_policy(). */
    bool loop_fixed;
    BlkLoopCheckFunc *loop_check;
    void *loop_check_opaque;
};

/* ---- Parent class ---- */

static char *blk_root_desc(BlockChild *c)
{
    BlockBackend *blk = c->opaque;
    if (blk->name) {
        return g_strdup_printf("block device '%s'", blk->name);
    }
    return g_strdup("an unnamed block device");  /* QEMU's words */
}

static void blk_root_drained_begin(BlockChild *c)
{
    BlockBackend *blk = c->opaque;
    g_atomic_int_inc(&blk->quiesce_counter);
}

static void blk_restart_bh(void *opaque)
{
    BlockBackend *blk = opaque;
    co_queue_restart_all(&blk->queued);
    /* Taken by blk_restart_queued: keeps blk alive until now. */
    if (g_atomic_int_dec_and_test(&blk->in_flight)) {
        drain_kick();
    }
}

/* Wake the held-back requests in the thread they wait in. */
static void blk_restart_queued(BlockBackend *blk)
{
    StrataLoop *loop = g_atomic_pointer_get(&blk->queued_loop);
    if (!loop || loop == loop_get()) {
        co_queue_restart_all(&blk->queued);
        return;
    }
    g_atomic_int_inc(&blk->in_flight);
    loop_bh_remote(loop, blk_restart_bh, blk);
}

static void blk_root_drained_end(BlockChild *c)
{
    BlockBackend *blk = c->opaque;
    g_assert(g_atomic_int_get(&blk->quiesce_counter) > 0);
    if (g_atomic_int_dec_and_test(&blk->quiesce_counter)) {
        blk_restart_queued(blk);
    }
}

static bool blk_root_drained_poll(BlockChild *c)
{
    BlockBackend *blk = c->opaque;
    return g_atomic_int_get(&blk->in_flight) > 0;
}

static bool blk_root_can_set_loop(BlockChild *c, StrataLoop *loop,
                                  GError **errp)
{
    BlockBackend *blk = c->opaque;
    if (blk->loop_fixed) {
        error_setg(errp, "Cannot change iothread of active block backend");
        return false;
    }
    return !blk->loop_check ||
           blk->loop_check(blk->loop_check_opaque, loop, errp);
}

static void blk_root_set_loop(BlockChild *c, StrataLoop *loop)
{
    /* Requests hop to the node's loop wherever they come from. */
}

static const BlockChildClass child_root = {
    .kind = "backend",
    .get_parent_desc = blk_root_desc,
    .drained_begin = blk_root_drained_begin,
    .drained_end = blk_root_drained_end,
    .drained_poll = blk_root_drained_poll,
    .can_set_loop = blk_root_can_set_loop,
    .set_loop = blk_root_set_loop,
};

void blk_set_loop_policy(BlockBackend *blk, bool fixed,
                         BlkLoopCheckFunc *check, void *opaque)
{
    blk->loop_fixed = fixed;
    blk->loop_check = check;
    blk->loop_check_opaque = opaque;
}

/* QEMU's bdrv_has_blk(): a block backend is one of bs's parents. */
bool node_has_backend(BlockNode *bs)
{
    for (BlockChild *c = node_next_parent(bs, NULL); c;
         c = node_next_parent(bs, c)) {
        if (c->klass == &child_root) {
            return true;
        }
    }
    return false;
}

/* ---- Life cycle ---- */

BlockBackend *blk_new(uint64_t perm, uint64_t shared)
{
    BlockBackend *blk = g_new0(BlockBackend, 1);
    blk->perm = perm;
    blk->shared = shared;
    blk->wce = true;
    co_queue_init(&blk->queued);
    return blk;
}

BlockBackend *blk_new_open(const char *filename, json_t *options, int flags,
                           GError **errp)
{
    uint64_t perm = BLK_PERM_CONSISTENT_READ;
    if (flags & NODE_O_RDWR) {
        perm |= BLK_PERM_WRITE;
    }
    if (flags & NODE_O_RESIZE) {
        perm |= BLK_PERM_RESIZE;
    }
    /*
     * Like QEMU: users share everything unless they ask not to (qemu-img
     * does for most commands), and then only reading.
     */
    uint64_t shared = BLK_PERM_ALL;
    if (flags & NODE_O_NO_SHARE) {
        shared = BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED;
    }
    BlockNode *bs = node_open(filename, options,
                              flags & ~(NODE_O_RESIZE | NODE_O_NO_SHARE), errp);
    if (!bs) {
        return NULL;
    }
    if (bs->force_share) {
        shared = BLK_PERM_ALL;
    }
    BlockBackend *blk = blk_new(perm, shared);
    if (!blk_insert_node(blk, bs, errp)) {
        node_unref(bs);
        blk_unref(blk);
        return NULL;
    }
    node_unref(bs);
    return blk;
}

void blk_unref(BlockBackend *blk)
{
    if (!blk) {
        return;
    }
    blk_drain(blk);
    blk_remove_node(blk);
    /* Requests queued by a drain that is still going on fail now. */
    blk_restart_queued(blk);
    drain_wait_begin();
    LOOP_WAIT_WHILE(g_atomic_int_get(&blk->queued_count) > 0 ||
                    g_atomic_int_get(&blk->in_flight) > 0);
    drain_wait_end();
    g_free(blk->name);
    g_free(blk);
}

bool blk_insert_node(BlockBackend *blk, BlockNode *bs, GError **errp)
{
    g_return_val_if_fail(blk->root == NULL, false);
    blk->root = child_attach(bs, "root", &child_root,
                             CHILD_ROLE_DATA | CHILD_ROLE_FILTERED |
                                 CHILD_ROLE_PRIMARY,
                             blk->perm, blk->shared, blk, errp);
    return blk->root != NULL;
}

void blk_remove_node(BlockBackend *blk)
{
    if (!blk->root) {
        return;
    }
    BlockChild *root = blk->root;
    blk->root = NULL;
    if (root->freezers) {
        g_ptr_array_set_size(root->freezers, 0);
    }
    child_detach(root, NULL);
}

BlockNode *blk_node(BlockBackend *blk)
{
    return blk->root ? blk->root->bs : NULL;
}

BlockChild *blk_root(BlockBackend *blk)
{
    return blk->root;
}

bool blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared,
                  GError **errp)
{
    if (blk->root && !child_set_perm(blk->root, perm, shared, errp)) {
        return false;
    }
    blk->perm = perm;
    blk->shared = shared;
    return true;
}

void blk_get_perm(BlockBackend *blk, uint64_t *perm, uint64_t *shared)
{
    *perm = blk->perm;
    *shared = blk->shared;
}

void blk_set_name(BlockBackend *blk, const char *name)
{
    g_free(blk->name);
    blk->name = g_strdup(name);
}

const char *blk_name(const BlockBackend *blk)
{
    return blk->name;
}

void blk_set_enable_write_cache(BlockBackend *blk, bool wce)
{
    blk->wce = wce;
}

bool blk_enable_write_cache(BlockBackend *blk)
{
    return blk->wce;
}

void blk_set_allow_write_beyond_eof(BlockBackend *blk, bool allow)
{
    blk->allow_write_beyond_eof = allow;
}

int64_t blk_getlength(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);
    return node_is_inserted(bs) ? node_getlength(bs) : -ENOMEDIUM;
}

bool blk_is_read_only(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);
    return bs ? bs->read_only : true;
}

int blk_in_flight(BlockBackend *blk)
{
    return g_atomic_int_get(&blk->in_flight);
}

void blk_drain(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);
    if (bs) {
        node_drain_begin(bs);
        node_drain_end(bs);
    } else {
        drain_wait_begin();
        LOOP_WAIT_WHILE(g_atomic_int_get(&blk->in_flight) > 0);
        drain_wait_end();
    }
}

/* ---- Requests ---- */

static void blk_request_end(BlockBackend *blk);

static int coroutine_fn blk_request_begin(BlockBackend *blk)
{
    /*
     * Hold back while drained: the drain waits only for what is in flight.
     * Once the node is gone (blk_unref) waiting requests fail instead.
     */
    StrataLoop *here = loop_get();
    /*
     * Published before in_flight is raised: a drain that ends after we saw
     * it knows where to wake us.  One user thread per backend.
     */
    if (g_atomic_pointer_get(&blk->queued_loop) != here) {
        g_atomic_pointer_set(&blk->queued_loop, here);
    }
    for (;;) {
        if (!blk->root) {
            return -ENOMEDIUM;
        }
        g_atomic_int_inc(&blk->in_flight);
        if (!g_atomic_int_get(&blk->quiesce_counter)) {
            return 0;
        }
        /* Drained (maybe from another thread): back off and wait. */
        g_atomic_int_inc(&blk->queued_count);
        blk_request_end(blk);
        co_queue_wait(&blk->queued);
        g_atomic_int_add(&blk->queued_count, -1);
        drain_kick();     /* blk_unref may be waiting for it */
    }
}

static void blk_request_end(BlockBackend *blk)
{
    if (g_atomic_int_dec_and_test(&blk->in_flight)) {
        drain_kick();
    }
}

void blk_set_report_io_errors(BlockBackend *blk, bool report)
{
    blk->report_io_errors = report;
}

/*
 * What the node answered (not the backend's own range or medium checks,
 * which an export makes before it asks).
 */
static int blk_node_result(BlockBackend *blk, int ret, bool is_read)
{
    if (ret < 0 && blk->report_io_errors) {
        node_report_io_error(blk->root->bs, blk->name, is_read, -ret);
    }
    return ret;
}

static int blk_check_range(BlockBackend *blk, int64_t offset, int64_t bytes,
                           bool write)
{
    /* A drive without a medium fails every request, as in QEMU. */
    if (!node_is_inserted(blk->root->bs)) {
        return -ENOMEDIUM;
    }
    if (offset < 0 || bytes < 0) {
        return -EIO;
    }
    if (write && blk->allow_write_beyond_eof) {
        return 0;
    }
    int64_t len = node_getlength(blk->root->bs);
    if (len < 0) {
        return (int)len;
    }
    if (offset > len || len - offset < bytes) {
        return -EIO;
    }
    return 0;
}

/* Request flags in QEMU's encoding (BDRV_REQ_*), for trace lines. */
static int qemu_req_flags(int flags)
{
    return (flags & REQ_MAY_UNMAP ? 0x4 : 0) | (flags & REQ_FUA ? 0x10 : 0) |
           (flags & REQ_WRITE_COMPRESSED ? 0x20 : 0) |
           (flags & REQ_WRITE_UNCHANGED ? 0x40 : 0) |
           (flags & REQ_NO_FALLBACK ? 0x100 : 0);
}

typedef enum { OP_READ, OP_WRITE, OP_ZEROES, OP_DISCARD, OP_FLUSH, OP_TRUNCATE } BlkOp;

typedef struct {
    BlockBackend *blk;
    BlkOp op;
    int64_t offset, bytes;
    IOVec *qiov;
    int flags;
    bool exact;
    PreallocMode prealloc;
    GError **errp;
    int ret;
    BlkCompletionFunc *cb;
    void *opaque;
    bool starting;      /* still inside blk_aio_start's co_enter */
} BlkReq;


/* The node's part of a request: in the node's loop. */
static int coroutine_fn blk_do(BlkReq *r)
{
    BlockBackend *blk = r->blk;
    int ret;

    switch (r->op) {
    case OP_READ:
        ret = blk_check_range(blk, r->offset, r->bytes, false);
        return ret < 0 ? ret :
            blk_node_result(blk, child_co_preadv(blk->root, r->offset,
                                                 r->bytes, r->qiov, 0,
                                                 r->flags), true);
    case OP_WRITE:
        ret = blk_check_range(blk, r->offset, r->bytes, true);
        return ret < 0 ? ret :
            blk_node_result(blk, child_co_pwritev(blk->root, r->offset,
                                                  r->bytes, r->qiov, 0,
                                                  r->flags), false);
    case OP_ZEROES:
        ret = blk_check_range(blk, r->offset, r->bytes, true);
        return ret < 0 ? ret :
            blk_node_result(blk, child_co_pwrite_zeroes(blk->root, r->offset,
                                                        r->bytes, r->flags),
                            false);
    case OP_DISCARD:
        ret = blk_check_range(blk, r->offset, r->bytes, true);
        return ret < 0 ? ret :
            blk_node_result(blk, child_co_pdiscard(blk->root, r->offset,
                                                   r->bytes), false);
    case OP_FLUSH:
        return blk_node_result(blk, node_co_flush(blk->root->bs), false);
    case OP_TRUNCATE:
        if (!node_is_inserted(blk->root->bs)) {
            error_setg(r->errp, "No medium inserted");
            return -ENOMEDIUM;
        }
        return child_co_truncate(blk->root, r->offset, r->exact, r->prealloc,
                                 r->errp);
    }
    return -EINVAL;
}

static void coroutine_fn blk_do_co(void *opaque)
{
    BlkReq *r = opaque;
    r->ret = blk_do(r);
}

/*
 * Held back and counted in the caller's thread; run in the node's, which
 * is the caller's unless a main-thread user reaches a node in an iothread.
 */
static int coroutine_fn blk_co_request(BlkReq *r)
{
    int ret = blk_request_begin(r->blk);
    if (ret < 0) {
        if (r->op == OP_TRUNCATE) {
            error_setg(r->errp, "No medium inserted");
        }
        return ret;
    }
    StrataLoop *home = node_loop(r->blk->root->bs);
    if (home == loop_get()) {
        ret = blk_do(r);
    } else {
        co_call_in(home, blk_do_co, r);
        ret = r->ret;
    }
    blk_request_end(r->blk);
    return ret;
}

int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset,
                               int64_t bytes, IOVec *qiov, int flags)
{
    TRACE(blk_co_preadv, "blk %p bs %p offset %" PRId64 " bytes %" PRId64
          " flags 0x%x", (void *)blk, (void *)blk_node(blk), offset, bytes,
          qemu_req_flags(flags));
    BlkReq r = { blk, OP_READ, offset, bytes, qiov, flags };
    return blk_co_request(&r);
}

int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset,
                                int64_t bytes, IOVec *qiov, int flags)
{
    TRACE(blk_co_pwritev, "blk %p bs %p offset %" PRId64 " bytes %" PRId64
          " flags 0x%x", (void *)blk, (void *)blk_node(blk), offset, bytes,
          qemu_req_flags(flags));
    BlkReq r = { blk, OP_WRITE, offset, bytes, qiov,
                 flags | (blk->wce ? 0 : REQ_FUA) };
    return blk_co_request(&r);
}

int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, int flags)
{
    /* QEMU's zero writes are vectored writes with a flag. */
    TRACE(blk_co_pwritev, "blk %p bs %p offset %" PRId64 " bytes %" PRId64
          " flags 0x%x", (void *)blk, (void *)blk_node(blk), offset, bytes,
          qemu_req_flags(flags) | 0x2);
    BlkReq r = { blk, OP_ZEROES, offset, bytes, NULL,
                 flags | (blk->wce ? 0 : REQ_FUA) };
    return blk_co_request(&r);
}

int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset,
                                 int64_t bytes)
{
    BlkReq r = { blk, OP_DISCARD, offset, bytes };
    return blk_co_request(&r);
}

int coroutine_fn blk_co_flush(BlockBackend *blk)
{
    BlkReq r = { blk, OP_FLUSH };
    return blk_co_request(&r);
}

int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset, bool exact,
                                 PreallocMode prealloc, GError **errp)
{
    BlkReq r = { blk, OP_TRUNCATE, offset, 0, NULL, 0, exact, prealloc, errp };
    return blk_co_request(&r);
}

/* ---- Synchronous wrappers ---- */

static int coroutine_fn blk_req_run(BlkReq *r)
{
    switch (r->op) {
    case OP_READ:
        return blk_co_preadv(r->blk, r->offset, r->bytes, r->qiov, r->flags);
    case OP_WRITE:
        return blk_co_pwritev(r->blk, r->offset, r->bytes, r->qiov, r->flags);
    case OP_ZEROES:
        return blk_co_pwrite_zeroes(r->blk, r->offset, r->bytes, r->flags);
    case OP_DISCARD:
        return blk_co_pdiscard(r->blk, r->offset, r->bytes);
    case OP_FLUSH:
        return blk_co_flush(r->blk);
    case OP_TRUNCATE:
        return blk_co_truncate(r->blk, r->offset, r->exact, r->prealloc, r->errp);
    }
    return -EINVAL;
}

static void blk_req_co(void *opaque)
{
    BlkReq *r = opaque;
    r->ret = blk_req_run(r);
}

static int blk_req_sync(BlkReq *r)
{
    if (in_coroutine()) {
        return blk_req_run(r);
    }
    co_run_sync(blk_req_co, r);
    return r->ret;
}

int blk_preadv(BlockBackend *blk, int64_t offset, int64_t bytes, IOVec *qiov,
               int flags)
{
    BlkReq r = { blk, OP_READ, offset, bytes, qiov, flags };
    return blk_req_sync(&r);
}

int blk_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes, IOVec *qiov,
                int flags)
{
    BlkReq r = { blk, OP_WRITE, offset, bytes, qiov, flags };
    return blk_req_sync(&r);
}

int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf,
              int flags)
{
    IOVec qiov;
    iovec_init_buf(&qiov, buf, (size_t)bytes);
    int ret = blk_preadv(blk, offset, bytes, &qiov, flags);
    iovec_destroy(&qiov);
    return ret;
}

int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes,
               const void *buf, int flags)
{
    IOVec qiov;
    iovec_init_buf(&qiov, (void *)buf, (size_t)bytes);
    int ret = blk_pwritev(blk, offset, bytes, &qiov, flags);
    iovec_destroy(&qiov);
    return ret;
}

int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                      int flags)
{
    BlkReq r = { blk, OP_ZEROES, offset, bytes, NULL, flags };
    return blk_req_sync(&r);
}

int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes)
{
    BlkReq r = { blk, OP_DISCARD, offset, bytes };
    return blk_req_sync(&r);
}

int blk_flush(BlockBackend *blk)
{
    BlkReq r = { blk, OP_FLUSH };
    return blk_req_sync(&r);
}

int blk_truncate(BlockBackend *blk, int64_t offset, bool exact,
                 PreallocMode prealloc, GError **errp)
{
    BlkReq r = { blk, OP_TRUNCATE, offset, 0, NULL, 0, exact, prealloc, errp };
    return blk_req_sync(&r);
}

/* ---- Asynchronous requests ---- */

static void blk_aio_complete_bh(void *opaque)
{
    BlkReq *r = opaque;
    BlockBackend *blk = r->blk;
    r->cb(r->opaque, r->ret);
    g_free(r);
    blk_request_end(blk);
}

static void blk_aio_co(void *opaque)
{
    BlkReq *r = opaque;
    r->ret = blk_req_run(r);
    /* Until the callback has run the request counts as in flight. */
    g_atomic_int_inc(&r->blk->in_flight);
    if (r->starting) {
        /*
         * Finished without waiting, still inside blk_aio_*(): the caller
         * must see its call return before the callback runs.
         */
        loop_bh(blk_aio_complete_bh, r);
    } else {
        /*
         * Resumed by a completion: call back at once, so that a callback
         * that starts the next request gets it queued in the same loop
         * iteration (and the same submission system call).
         */
        blk_aio_complete_bh(r);
    }
}

static void blk_aio_start(BlockBackend *blk, BlkOp op, int64_t offset,
                          int64_t bytes, IOVec *qiov, int flags,
                          BlkCompletionFunc *cb, void *opaque)
{
    BlkReq *r = g_new0(BlkReq, 1);
    r->blk = blk;
    r->op = op;
    r->offset = offset;
    r->bytes = bytes;
    r->qiov = qiov;
    r->flags = flags;
    r->cb = cb;
    r->opaque = opaque;
    r->starting = true;
    co_enter(co_create(blk_aio_co, r));
    /* Still alive here: either waiting for I/O or its completion is queued. */
    r->starting = false;
}

void blk_aio_preadv(BlockBackend *blk, int64_t offset, IOVec *qiov, int flags,
                    BlkCompletionFunc *cb, void *opaque)
{
    blk_aio_start(blk, OP_READ, offset, (int64_t)qiov->size, qiov, flags, cb,
                  opaque);
}

void blk_aio_pwritev(BlockBackend *blk, int64_t offset, IOVec *qiov, int flags,
                     BlkCompletionFunc *cb, void *opaque)
{
    blk_aio_start(blk, OP_WRITE, offset, (int64_t)qiov->size, qiov, flags, cb,
                  opaque);
}

void blk_aio_flush(BlockBackend *blk, BlkCompletionFunc *cb, void *opaque)
{
    blk_aio_start(blk, OP_FLUSH, 0, 0, NULL, 0, cb, opaque);
}

void blk_aio_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes,
                      BlkCompletionFunc *cb, void *opaque)
{
    blk_aio_start(blk, OP_DISCARD, offset, bytes, NULL, 0, cb, opaque);
}

void blk_aio_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                           int flags, BlkCompletionFunc *cb, void *opaque)
{
    blk_aio_start(blk, OP_ZEROES, offset, bytes, NULL, flags, cb, opaque);
}
