/*
 * Private to block/: transactions and the internal graph functions that
 * the public graph edits are built from.
 */
#ifndef BLOCK_INT_H
#define BLOCK_INT_H

#include "strata/block-driver.h"
#include "strata/backend.h"
#include "strata/loop.h"
#include "strata/units.h"

/*
 * A transaction is an undo log.  Every step of a graph change records how to
 * finish it (commit) and how to take it back (abort); abort runs the steps
 * backwards, so the graph returns to exactly the state it had.
 */
typedef struct Txn Txn;
typedef struct TxnActionDrv {
    void (*commit)(void *opaque);
    void (*abort)(void *opaque);
    void (*clean)(void *opaque); /* after commit or abort: free opaque */
} TxnActionDrv;

Txn *txn_new(void);
void txn_add(Txn *txn, const TxnActionDrv *drv, void *opaque);
void txn_commit(Txn *txn);
void txn_abort(Txn *txn);

/* Graph primitives that record their undo in txn.  No permission checks. */
BlockChild *child_new_noperm(BlockNode *child_bs, const char *name,
                             const BlockChildClass *klass, unsigned role,
                             uint64_t perm, uint64_t shared, void *opaque,
                             Txn *txn);
void child_remove_noperm(BlockChild *c, Txn *txn);
void child_set_node_noperm(BlockChild *c, BlockNode *new_bs, Txn *txn);
void child_set_perm_noperm(BlockChild *c, uint64_t perm, uint64_t shared,
                           Txn *txn);
/* Record an edge's permissions for after a reopen (cleared on commit/abort). */
void child_set_final_noperm(BlockChild *c, uint64_t perm, uint64_t shared,
                            Txn *txn);

/*
 * Recompute cumulative permissions of `nodes` and everything below them,
 * check every node's parents against each other, ask protocol drivers
 * (locks), and record everything in txn.  reopen: nodes being reopened use
 * their ReopenState (union/intersection rule).  ignore_errors: relaxing
 * during a reopen commit: failures of the protocol layer are dropped.
 */
bool perm_refresh_nodes(GSList *nodes, Txn *txn, bool ignore_errors,
                        GError **errp);

/* The ReopenState of bs while a reopen is being prepared, else NULL. */
ReopenState *node_reopen_state(const BlockNode *bs);
void node_set_reopen_state(BlockNode *bs, ReopenState *rs);
/* Will bs be writable once the pending reopen (if any) commits? */
bool node_writable_after_reopen(const BlockNode *bs);

/*
 * Run fn(opaque) to completion in bs's loop (node_co_call): directly in
 * coroutine context of that loop, else in a new coroutine while the
 * caller's loop runs.  The synchronous entry points of strata/block-ops.h
 * are built on it.  bs NULL: here.
 */
static inline void block_co_call(BlockNode *bs, CoroutineEntry *fn,
                                 void *opaque)
{
    node_co_call(bs, fn, opaque);
}

/*
 * Before parent gets child as a child: put both in one loop (the child's
 * graph moves to the parent's loop, or else the parent's to the child's).
 */
bool node_join_loop(BlockNode *parent, BlockNode *child, GError **errp);

/* The BlockChildClass used for node parents. */
extern const BlockChildClass child_of_node;

/* Node lifecycle. */
BlockNode *node_new(const BlockDriver *drv);
void node_register(BlockNode *bs);
bool node_name_valid(const char *name);

/* Drain helpers used by backend.c. */
void node_parents_drained_begin(BlockNode *bs, BlockChild *ignore);
void node_parents_drained_end(BlockNode *bs, BlockChild *ignore);
/* Wake drain waiters (called when in_flight drops to zero). */
void drain_kick(void);
/*
 * Around a main-loop wait for counters that other threads lower (they
 * call drain_kick(), which wakes the main loop only while someone waits).
 */
void drain_wait_begin(void);
void drain_wait_end(void);


/* Requests: used by io.c and status.c. */
int coroutine_fn node_co_preadv_node(BlockNode *bs, int64_t offset,
                                     int64_t bytes, IOVec *qiov,
                                     size_t qiov_offset, int flags);
int coroutine_fn node_co_pwritev_node(BlockNode *bs, int64_t offset,
                                      int64_t bytes, IOVec *qiov,
                                      size_t qiov_offset, int flags);
/*
 * A request that reaches a driver by another path (copy offload,
 * copy-range.c): counted in flight and tracked, so that it waits for
 * read-modify-writes over it and they wait for it (flags: REQ_SERIALISING
 * makes it serialising, as a write with it); a write gets what every
 * write gets at the end (bitmaps, write threshold, write generation: a
 * later flush is not skipped).
 */
/* Promote the background work of bs's requests in flight (drain.c). */
void node_promote_requests(BlockNode *bs);

typedef struct TrackedReq TrackedReq;
TrackedReq *coroutine_fn node_co_req_begin(BlockNode *bs, int64_t offset,
                                           int64_t bytes, int flags);
void node_co_req_end(BlockNode *bs, TrackedReq *r, int64_t offset,
                     int64_t bytes, bool write, int ret);

#endif
