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

typedef struct {
    GPtrArray *set;
    Coroutine *co;
    bool done;          /* the nodes are quiet: set by drain_wait_bh */
} DrainWait;

static void drain_wait_bh(void *opaque)
{
    DrainWait *w = opaque;
    g_atomic_int_inc(&drain_waiters);
    LOOP_WAIT_WHILE(set_busy(w->set));
    g_atomic_int_add(&drain_waiters, -1);
    w->done = true;
    co_enter(w->co);
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

void node_drain_begin(BlockNode *bs)
{
    GPtrArray *set = drain_quiesce(bs);
    if (in_coroutine()) {
        /*
         * A coroutine (a job) cannot run the loop itself: wait from a BH and
         * come back when the nodes are quiet.  The caller must not have a
         * request of its own in flight on them, or this never ends.
         */
        DrainWait w = { set, co_self(), false };
        loop_bh(drain_wait_bh, &w);
        /*
         * w is drain_wait_bh's until it sets done: an entry before that
         * (a co_wake() left over from an earlier wait, possibly run by the
         * BH's own nested loop) must neither return with requests still
         * in flight nor leave the BH polling a freed set.
         */
        while (!w.done) {
            co_yield();
        }
        return;
    }
    g_atomic_int_inc(&drain_waiters);
    LOOP_WAIT_WHILE(set_busy(set));
    g_atomic_int_add(&drain_waiters, -1);
}

void node_drain_end(BlockNode *bs)
{
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

bool node_is_quiesced(const BlockNode *bs)
{
    return g_atomic_int_get((int *)&bs->quiesce_counter) > 0;
}

/* Roots drained by drain_all_begin, one list per nesting level. */
static GSList *drain_all_stack;

void drain_all_begin(void)
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
    if (in_coroutine()) {
        /* A coroutine waits through a BH, one set at a time. */
        for (GSList *l = roots; l; l = l->next) {
            node_drain_begin(l->data);
        }
        drain_all_stack = g_slist_prepend(drain_all_stack, roots);
        return;
    }
    GPtrArray *sets = g_ptr_array_new();
    for (GSList *l = roots; l; l = l->next) {
        g_ptr_array_add(sets, drain_quiesce(l->data));
    }
    g_atomic_int_inc(&drain_waiters);
    LOOP_WAIT_WHILE(sets_busy(sets));
    g_atomic_int_add(&drain_waiters, -1);
    g_ptr_array_free(sets, TRUE);
    drain_all_stack = g_slist_prepend(drain_all_stack, roots);
}

void drain_all_end(void)
{
    g_return_if_fail(drain_all_stack != NULL);
    GSList *roots = drain_all_stack->data;
    drain_all_stack = g_slist_delete_link(drain_all_stack, drain_all_stack);
    for (GSList *l = roots; l; l = l->next) {
        node_drain_end(l->data);
        node_unref(l->data);
    }
    g_slist_free(roots);
}
