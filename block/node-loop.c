/*
 * The loop a node runs in, and moving a connected graph to another one.
 *
 * Every node has a home loop (bs->home, NULL for the main loop); requests
 * enter a node only from that thread.  All nodes of a connected graph share
 * it, because a request on one walks into its children and drain spans
 * parents and children.  Moving is QEMU's bdrv_try_change_aio_context:
 * first every parent that is not a node (a backend, a job) is asked whether
 * it can follow, then the nodes are drained from the main thread (nothing
 * runs on them in their old thread any more), their home changed, drivers
 * and parents told, and the drain ended, which restarts held-back requests
 * in the new thread.
 */
#include "block-int.h"

StrataLoop *node_loop(const BlockNode *bs)
{
    return bs->home ? bs->home : loop_main();
}

typedef struct {
    BlockNode *bs;
    CoroutineEntry *fn;
    void *opaque;
} NodeHop;

static void coroutine_fn node_hop_co(void *opaque)
{
    NodeHop *h = opaque;
    h->fn(h->opaque);
    node_dec_in_flight(h->bs);
}

void node_co_call(BlockNode *bs, CoroutineEntry *fn, void *opaque)
{
    StrataLoop *home = bs ? node_loop(bs) : NULL;
    if (!home || home == loop_get()) {
        co_call_in(NULL, fn, opaque);
        return;
    }
    /*
     * In flight from now, not from when it starts over there: a move
     * (which drains first) must not slip in between and leave it running
     * in the node's old thread.
     */
    node_inc_in_flight(bs);
    NodeHop h = { bs, fn, opaque };
    co_call_in(home, node_hop_co, &h);
}

/* bs and every node reachable through edges in either direction. */
static void collect_component(BlockNode *bs, GPtrArray *nodes,
                              GPtrArray *others, GHashTable *seen)
{
    if (!g_hash_table_add(seen, bs)) {
        return;
    }
    g_ptr_array_add(nodes, bs);
    /* Parents first, as QEMU asks them before the children. */
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->klass->parent_is_node) {
            collect_component(c->opaque, nodes, others, seen);
        } else {
            g_ptr_array_add(others, c);
        }
    }
    for (GList *l = bs->children; l; l = l->next) {
        collect_component(((BlockChild *)l->data)->bs, nodes, others, seen);
    }
}

/* bs's component, its nodes referenced (component_free lets go). */
static void component_get(BlockNode *bs, GPtrArray **nodes,
                          GPtrArray **others)
{
    GHashTable *seen = g_hash_table_new(NULL, NULL);
    *nodes = g_ptr_array_new();
    *others = g_ptr_array_new();
    collect_component(bs, *nodes, *others, seen);
    g_hash_table_destroy(seen);
    for (guint i = 0; i < (*nodes)->len; i++) {
        node_ref((*nodes)->pdata[i]);
    }
}

static void component_free(GPtrArray *nodes, GPtrArray *others)
{
    for (guint i = 0; i < nodes->len; i++) {
        node_unref(nodes->pdata[i]);
    }
    g_ptr_array_free(nodes, TRUE);
    g_ptr_array_free(others, TRUE);
}

static bool same_members(GPtrArray *a, GPtrArray *b)
{
    if (a->len != b->len) {
        return false;
    }
    for (guint i = 0; i < a->len; i++) {
        if (!g_ptr_array_find(b, a->pdata[i], NULL)) {
            return false;
        }
    }
    return true;
}

/* Whether every parent that is not a node and every driver of the
 * component can go to loop (QEMU's messages otherwise). */
static bool component_can_move(GPtrArray *nodes, GPtrArray *others,
                               StrataLoop *loop, GError **errp)
{
    for (guint i = 0; i < others->len; i++) {
        BlockChild *c = others->pdata[i];
        if (!c->klass->can_set_loop) {
            g_autofree char *user = child_parent_desc(c);
            error_setg(errp, "Changing iothreads is not supported by %s",
                       user);
            return false;
        }
        if (!c->klass->can_set_loop(c, loop, errp)) {
            return false;
        }
    }
    for (guint i = 0; i < nodes->len; i++) {
        BlockNode *n = nodes->pdata[i];
        if (n->drv->main_loop_only && loop != loop_main()) {
            error_setg(errp, "Cannot move node '%s' to an iothread: the %s "
                       "driver runs in the main loop only", n->node_name,
                       n->drv->format_name);
            return false;
        }
    }
    return true;
}

/* Tries before node_set_loop gives up on a graph that keeps changing. */
#define SET_LOOP_TRIES 8

bool node_set_loop(BlockNode *bs, StrataLoop *loop, GError **errp)
{
    StrataLoop *main_loop = loop_main();
    if (!loop) {
        loop = main_loop;
    }
    g_return_val_if_fail(loop_get() == main_loop, false);

    node_ref(bs);
    for (int tries = 0;; tries++) {
        GPtrArray *nodes, *others, *nodes2, *others2;

        if (node_loop(bs) == loop) {
            node_unref(bs);
            return true;
        }
        component_get(bs, &nodes, &others);
        if (!component_can_move(nodes, others, loop, errp)) {
            component_free(nodes, others);
            node_unref(bs);
            return false;
        }
        for (guint i = 0; i < nodes->len; i++) {
            node_drain_begin(nodes->pdata[i]);
        }
        /*
         * The drains ran the loop (from a coroutine always: block/drain.c),
         * where a job's completion or another client's command may have
         * detached a job's or a backend's edge (freeing it) or changed the
         * component.  Moved is what is there now, drained; if that is not
         * what was checked and drained, start over.
         */
        component_get(bs, &nodes2, &others2);
        bool same = same_members(nodes, nodes2) &&
                    same_members(others, others2);
        if (same) {
            for (guint i = 0; i < nodes2->len; i++) {
                BlockNode *n = nodes2->pdata[i];
                n->home = loop == main_loop ? NULL : loop;
                if (n->drv->set_loop) {
                    n->drv->set_loop(n);
                }
            }
            for (guint i = 0; i < others2->len; i++) {
                BlockChild *c = others2->pdata[i];
                c->klass->set_loop(c, loop);
            }
        }
        component_free(nodes2, others2);
        for (guint i = nodes->len; i-- > 0;) {
            node_drain_end(nodes->pdata[i]);
        }
        component_free(nodes, others);
        if (same) {
            node_unref(bs);
            return true;
        }
        if (tries + 1 == SET_LOOP_TRIES) {
            error_setg(errp, "Cannot change the iothread of node '%s': its "
                       "graph kept changing meanwhile", node_get_name(bs));
            node_unref(bs);
            return false;
        }
    }
}

bool node_join_loop(BlockNode *parent, BlockNode *child, GError **errp)
{
    if (node_loop(parent) == node_loop(child)) {
        return true;
    }
    /* As QEMU: the child follows its new parent, or else the other way. */
    if (node_set_loop(child, node_loop(parent), NULL)) {
        return true;
    }
    return node_set_loop(parent, node_loop(child), errp);
}
