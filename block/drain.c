/*
 * Drain: quiesce a node so that nothing issues new requests to it, and wait
 * for the requests in flight.
 *
 * Requests enter the graph only through non-node parents (backends, jobs,
 * exports).  Draining bs therefore quiesces bs, everything above it and
 * everything below it: each of those nodes has its quiesce counter raised
 * and its non-node parents told to stop (backends queue new requests, jobs
 * pause).  Then the loop runs until none of them has a request in flight.
 * The set of nodes is remembered with the drain, so the matching end
 * releases exactly what the begin took even if the graph changed meanwhile.
 * Drains nest.
 */
#include "block-int.h"

/*
 * Drains run in the main thread; requests in flight may end in an
 * iothread, which must then wake the main loop to have set_busy() looked at
 * again.  Counters are atomic for that reason.
 */
static int drain_waiters;

void drain_kick(void)
{
    if (g_atomic_int_get(&drain_waiters)) {
        g_main_context_wakeup(loop_context(loop_main()));
    }
}

void drain_wait_begin(void)
{
    g_atomic_int_inc(&drain_waiters);
}

void drain_wait_end(void)
{
    g_atomic_int_add(&drain_waiters, -1);
}

void node_parents_drained_begin(BlockNode *bs, BlockChild *ignore)
{
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c == ignore || c->klass->parent_is_node) {
            continue;
        }
        if (c->klass->drained_begin) {
            c->klass->drained_begin(c);
        }
        c->parent_quiesced = true;
    }
}

void node_parents_drained_end(BlockNode *bs, BlockChild *ignore)
{
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c == ignore || c->klass->parent_is_node) {
            continue;
        }
        if (c->klass->drained_end) {
            c->klass->drained_end(c);
        }
    }
}

static void collect_down(BlockNode *bs, GPtrArray *set, GHashTable *seen)
{
    if (!g_hash_table_add(seen, bs)) {
        return;
    }
    g_ptr_array_add(set, bs);
    for (GList *l = bs->children; l; l = l->next) {
        collect_down(((BlockChild *)l->data)->bs, set, seen);
    }
}

static void collect_up(BlockNode *bs, GPtrArray *set, GHashTable *seen)
{
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->klass->parent_is_node) {
            BlockNode *parent = c->opaque;
            if (g_hash_table_add(seen, parent)) {
                g_ptr_array_add(set, parent);
                collect_up(parent, set, seen);
            }
        }
    }
}

static bool set_busy(GPtrArray *set)
{
    for (guint i = 0; i < set->len; i++) {
        BlockNode *bs = set->pdata[i];
        if (g_atomic_int_get(&bs->in_flight) > 0) {
            return true;
        }
        for (GList *l = bs->parents; l; l = l->next) {
            BlockChild *c = l->data;
            if (!c->klass->parent_is_node && c->klass->drained_poll &&
                c->klass->drained_poll(c)) {
                return true;
            }
        }
    }
    return false;
}

static bool sets_busy(GPtrArray *sets)
{
    for (guint i = 0; i < sets->len; i++) {
        if (set_busy(sets->pdata[i])) {
            return true;
        }
    }
    return false;
}

/*
 * A drain begun or ended in a coroutine (a QMP command, a job) is done
 * from a BH, outside any coroutine, while the coroutine waits, as QEMU's
 * bdrv_co_yield_to_drain(): there a job's pause and resume enter it at
 * once (job_pause(), job_resume()), so an idle job reaches its pause
 * point (paused / standby said) before the drain begins, and leaves it
 * (running / ready said) before the drain's end returns, as in QEMU,
 * whose QMP commands run outside coroutines.  Entered from a coroutine,
 * the job would only be scheduled: a drain right after the end of another
 * found it still parked, and a client saw one standby/ready pair where
 * QEMU sends two, and the ready after the command's reply.
 */
typedef struct {
    LoopFunc *fn;
    void *opaque;
    Coroutine *co;
    bool done;          /* fn has run: set by drain_hop_bh */
} DrainHop;

static void drain_hop_bh(void *opaque)
{
    DrainHop *h = opaque;
    h->fn(h->opaque);
    h->done = true;
    co_enter(h->co);
}

/* fn(opaque) outside any coroutine: now, or from a BH while we wait. */
static void drain_outside_coroutine(LoopFunc *fn, void *opaque)
{
    if (!in_coroutine()) {
        fn(opaque);
        return;
    }
    DrainHop h = { fn, opaque, co_self(), false };
    loop_bh(drain_hop_bh, &h);
    /*
     * h is drain_hop_bh's until it sets done: an entry before that (a
     * co_wake() left over from an earlier wait, possibly run by the BH's
     * own nested loop) must neither return with the drain not done nor
     * leave the BH with a dead frame.
     */
    while (!h.done) {
        co_yield();
    }
}

/* Quiesce bs's drain set (no waiting); the set is pushed on bs. */
static GPtrArray *drain_quiesce(BlockNode *bs)
{
    GPtrArray *set = g_ptr_array_new();
    GHashTable *seen = g_hash_table_new(NULL, NULL);
    collect_down(bs, set, seen);
    collect_up(bs, set, seen);
    g_hash_table_destroy(seen);

    for (guint i = 0; i < set->len; i++) {
        BlockNode *n = set->pdata[i];
        node_ref(n);
        /* Atomic: a timer in the node's thread looks at it (qcow2). */
        if (g_atomic_int_add(&n->quiesce_counter, 1) == 0 &&
            n->drv->drained_begin) {
            n->drv->drained_begin(n);
        }
        node_parents_drained_begin(n, NULL);
    }
    bs->drain_sets = g_slist_prepend(bs->drain_sets, set);
    return set;
}

/*
 * The drain waits for every request in flight on the sets' nodes, and a
 * job above them parks only once its own requests are done: whoever
 * issued one at idle class (a copy job's offload, a stream's copy-on-read
 * write, strata/pool-class.h) is promoted, at each look, so that the wait
 * is not held up until the pool's watchdog (10 ms) gives a starving idle
 * thread its class back.  Nodes in the main loop only: an iothread's
 * requests and frames are that thread's (its idle calls still end by the
 * watchdog).  Not covered here: a job waiting for a pool call that is
 * no request on the sets' nodes (the copy engine's write-behind,
 * node_co_start_writeback; its copies to a target outside the set): the
 * job's pause covers those (job_pause() -> JobDriver.pause_wanted ->
 * block_copy_promote, tests/test-drain-pause-wake.c).
 */
static void sets_promote(GPtrArray *sets)
{
    StrataLoop *main_loop = loop_main();

    for (guint i = 0; i < sets->len; i++) {
        GPtrArray *set = sets->pdata[i];
        for (guint k = 0; k < set->len; k++) {
            BlockNode *bs = set->pdata[k];
            if (g_atomic_int_get(&bs->in_flight) > 0 &&
                node_loop(bs) == main_loop) {
                node_promote_requests(bs);
            }
        }
    }
}

static bool sets_busy_promote(GPtrArray *sets)
{
    if (!sets_busy(sets)) {
        return false;
    }
    sets_promote(sets);
    return true;
}

/*
 * Wait until nothing is in flight on the sets' nodes and every job above
 * them is parked (its drained_poll).  The caller must not have a request
 * of its own in flight on them, or this never ends.
 */
static void drain_wait(GPtrArray *sets)
{
    g_atomic_int_inc(&drain_waiters);
    LOOP_WAIT_WHILE(sets_busy_promote(sets));
    g_atomic_int_add(&drain_waiters, -1);
}

static void drain_begin_here(void *opaque)
{
    BlockNode *bs = opaque;
    GPtrArray *sets = g_ptr_array_new();
    g_ptr_array_add(sets, drain_quiesce(bs));
    drain_wait(sets);
    g_ptr_array_free(sets, TRUE);
}

void node_drain_begin(BlockNode *bs)
{
    /*
     * From a coroutine the drain begins in a BH, after whatever the loop
     * had queued before it: a job's completion there may drop the last
     * reference the caller relied on (a node it found by name or through
     * an edge), and the BH would quiesce a freed node.  Held until the
     * drain's set holds it; the caller's pointer stays good until the
     * matching end, as when the drain begins at once.
     */
    node_ref(bs);
    drain_outside_coroutine(drain_begin_here, bs);
    node_unref(bs);
}

static void drain_end_here(void *opaque)
{
    BlockNode *bs = opaque;
    g_return_if_fail(bs->drain_sets != NULL);
    GPtrArray *set = bs->drain_sets->data;
    bs->drain_sets = g_slist_delete_link(bs->drain_sets, bs->drain_sets);
    for (guint i = set->len; i-- > 0;) {
        BlockNode *n = set->pdata[i];
        node_parents_drained_end(n, NULL);
        g_assert(n->quiesce_counter > 0);
        if (g_atomic_int_dec_and_test(&n->quiesce_counter) &&
            n->drv->drained_end) {
            n->drv->drained_end(n);
        }
    }
    for (guint i = 0; i < set->len; i++) {
        node_unref(set->pdata[i]);
    }
    g_ptr_array_free(set, TRUE);
}

void node_drain_end(BlockNode *bs)
{
    drain_outside_coroutine(drain_end_here, bs);
}

bool node_is_quiesced(const BlockNode *bs)
{
    return g_atomic_int_get((int *)&bs->quiesce_counter) > 0;
}

/* Roots drained by drain_all_begin, one list per nesting level. */
static GSList *drain_all_stack;

static void drain_all_begin_here(void *opaque)
{
    GSList *roots = NULL;
    for (BlockNode *bs = node_next(NULL); bs; bs = node_next(bs)) {
        bool root = true;
        for (GList *l = bs->parents; l; l = l->next) {
            if (((BlockChild *)l->data)->klass->parent_is_node) {
                root = false;
            }
        }
        if (root) {
            node_ref(bs);
            roots = g_slist_prepend(roots, bs);
        }
    }
    /*
     * Oldest first, as QEMU walks all_bdrv_states: the order in which the
     * jobs above pause is what a client sees at shutdown (their events).
     */
    roots = g_slist_reverse(roots);
    /*
     * Every root is quiesced before any is waited for, as QEMU's
     * bdrv_drain_all_begin polls once for all: a job writing to one root
     * may wait for a read through another (a throttle node whose limits
     * only a drain lifts), so waiting root by root could wait for ever.
     */
    GPtrArray *sets = g_ptr_array_new();
    for (GSList *l = roots; l; l = l->next) {
        g_ptr_array_add(sets, drain_quiesce(l->data));
    }
    drain_wait(sets);
    g_ptr_array_free(sets, TRUE);
    drain_all_stack = g_slist_prepend(drain_all_stack, roots);
}

void drain_all_begin(void)
{
    drain_outside_coroutine(drain_all_begin_here, NULL);
}

static void drain_all_end_here(void *opaque)
{
    g_return_if_fail(drain_all_stack != NULL);
    GSList *roots = drain_all_stack->data;
    drain_all_stack = g_slist_delete_link(drain_all_stack, drain_all_stack);
    for (GSList *l = roots; l; l = l->next) {
        drain_end_here(l->data);
        node_unref(l->data);
    }
    g_slist_free(roots);
}

void drain_all_end(void)
{
    drain_outside_coroutine(drain_all_end_here, NULL);
}
