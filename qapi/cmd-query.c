/*
 * Queries of the node graph: query-named-block-nodes, query-block,
 * query-blockstats, x-debug-query-block-graph.
 *
 * A daemon has no devices (QEMU's named BlockBackends), so what QEMU
 * reports per device is empty here, as it is in qemu-storage-daemon.
 */
#include <string.h>
#include "strata/backend.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/error.h"
#include "qapi-commands.h"
#include "qapi-visit.h"
#include "node-info.h"

/*
 * QEMU drops the driver of a node whose image turned out corrupt; such a
 * node has no medium while its children still have theirs.
 */
static bool node_is_ejected(BlockNode *bs)
{
    if (node_is_inserted(bs)) {
        return false;
    }
    for (BlockChild *c = node_next_child(bs, NULL); c;
         c = node_next_child(bs, c)) {
        if (!node_is_inserted(child_node(c))) {
            return false;
        }
    }
    return true;
}

BlockDeviceInfoList *qmp_query_named_block_nodes(bool has_flat, bool flat,
                                                 GError **errp)
{
    BlockDeviceInfoList *list = NULL;

    /* QEMU prepends each node: the newest comes first. */
    for (BlockNode *bs = node_next(NULL); bs; bs = node_next(bs)) {
        if (node_is_ejected(bs)) {
            error_setg(errp, "Block device %s is ejected", node_get_name(bs));
            qapi_free_BlockDeviceInfoList(list);
            return NULL;
        }
        BlockDeviceInfo *info = node_info_device(bs, has_flat && flat, errp);
        if (!info) {
            qapi_free_BlockDeviceInfoList(list);
            return NULL;
        }
        BlockDeviceInfoList *e = g_new0(BlockDeviceInfoList, 1);
        e->value = info;
        e->next = list;
        list = e;
    }
    return list;
}

BlockInfoList *qmp_query_block(GError **errp)
{
    (void)errp;
    return NULL;
}

/* The one child holding bs's data, as QEMU picks the "parent" entry. */
static BlockNode *stats_parent(BlockNode *bs)
{
    BlockChild *primary = NULL;
    for (BlockChild *c = node_next_child(bs, NULL); c;
         c = node_next_child(bs, c)) {
        if (child_role(c) & CHILD_ROLE_PRIMARY) {
            primary = c;
            break;
        }
    }
    if (primary && (child_role(primary) & (CHILD_ROLE_DATA |
                                           CHILD_ROLE_FILTERED))) {
        return child_node(primary);
    }
    BlockChild *data = NULL;
    for (BlockChild *c = node_next_child(bs, NULL); c;
         c = node_next_child(bs, c)) {
        if (child_role(c) & CHILD_ROLE_DATA) {
            if (data) {
                return NULL;
            }
            data = c;
        }
    }
    return data ? child_node(data) : NULL;
}

/*
 * QEMU's node-level statistics: the request counters live in devices, so
 * a node reports only how far it was written and, for files, discards.
 */
static BlockStats *node_stats(BlockNode *bs)
{
    BlockStats *s = g_new0(BlockStats, 1);
    s->stats = g_new0(BlockDeviceStats, 1);
    s->node_name = g_strdup(node_get_name(bs));
    s->stats->wr_highest_offset = (int64_t)node_wr_highest_offset(bs);

    const char *proto = driver_protocol_name(node_get_driver(bs));
    const char *drv = node_get_format_name(bs);
    if (proto && (!strcmp(drv, "file") || !strcmp(drv, "host_device"))) {
        BlockStatsSpecific *sp = g_new0(BlockStatsSpecific, 1);
        BlockStatsSpecificFile *f;
        if (!strcmp(drv, "file")) {
            sp->driver = BLOCKDEV_DRIVER_FILE;
            f = &sp->u.file;
        } else {
            sp->driver = BLOCKDEV_DRIVER_HOST_DEVICE;
            f = &sp->u.host_device;
        }
        node_get_discard_stats(bs, &f->discard_nb_ok, &f->discard_nb_failed,
                               &f->discard_bytes_ok);
        s->driver_specific = sp;
    }
    BlockNode *parent = stats_parent(bs);
    if (parent) {
        s->parent = node_stats(parent);
    }
    return s;
}

BlockStatsList *qmp_query_blockstats(bool has_query_nodes, bool query_nodes,
                                     GError **errp)
{
    BlockStatsList *head = NULL, **tail = &head;

    (void)errp;
    if (!has_query_nodes || !query_nodes) {
        return NULL;            /* no devices */
    }
    for (BlockNode *bs = node_next(NULL); bs; bs = node_next(bs)) {
        BlockStatsList *e = g_new0(BlockStatsList, 1);
        e->value = node_stats(bs);
        *tail = e;
        tail = &e->next;
    }
    return head;
}

/* ---- x-debug-query-block-graph ---- */

typedef struct {
    XDbgBlockGraph *graph;
    GHashTable *ids;            /* parent or node -> id (from 1) */
} Graph;

/* QEMU numbers objects in the order it first meets them. */
static uint64_t graph_id(Graph *g, void *obj)
{
    uint64_t id = (uint64_t)(uintptr_t)g_hash_table_lookup(g->ids, obj);
    if (!id) {
        id = g_hash_table_size(g->ids) + 1;
        g_hash_table_insert(g->ids, obj, (void *)(uintptr_t)id);
    }
    return id;
}

static void graph_add_node(Graph *g, void *obj, XDbgBlockGraphNodeType type,
                           const char *name)
{
    XDbgBlockGraphNode *n = g_new0(XDbgBlockGraphNode, 1);
    n->id = graph_id(g, obj);
    n->type = type;
    n->name = g_strdup(name ? name : "");
    XDbgBlockGraphNodeList *e = g_new0(XDbgBlockGraphNodeList, 1);
    e->value = n;
    e->next = g->graph->nodes;
    g->graph->nodes = e;
}

static void perm_list(BlockPermissionList **list, uint64_t perm)
{
    static const uint64_t bits[BLOCK_PERMISSION__MAX] = {
        [BLOCK_PERMISSION_CONSISTENT_READ] = BLK_PERM_CONSISTENT_READ,
        [BLOCK_PERMISSION_WRITE] = BLK_PERM_WRITE,
        [BLOCK_PERMISSION_WRITE_UNCHANGED] = BLK_PERM_WRITE_UNCHANGED,
        [BLOCK_PERMISSION_RESIZE] = BLK_PERM_RESIZE,
    };
    /* Prepended, as QEMU builds it: the highest bit comes first. */
    for (int p = 0; p < BLOCK_PERMISSION__MAX; p++) {
        if (perm & bits[p]) {
            BlockPermissionList *e = g_new0(BlockPermissionList, 1);
            e->value = (BlockPermission)p;
            e->next = *list;
            *list = e;
        }
    }
}

static void graph_add_edge(Graph *g, void *parent, BlockChild *c)
{
    uint64_t perm, shared;
    XDbgBlockGraphEdge *edge = g_new0(XDbgBlockGraphEdge, 1);

    edge->parent = graph_id(g, parent);
    edge->child = graph_id(g, child_node(c));
    edge->name = g_strdup(child_name(c));
    child_get_perm(c, &perm, &shared);
    perm_list(&edge->perm, perm);
    perm_list(&edge->shared_perm, shared);
    XDbgBlockGraphEdgeList *e = g_new0(XDbgBlockGraphEdgeList, 1);
    e->value = edge;
    e->next = g->graph->edges;
    g->graph->edges = e;
}

XDbgBlockGraph *qmp_x_debug_query_block_graph(GError **errp)
{
    Graph g = { g_new0(XDbgBlockGraph, 1),
                g_hash_table_new(NULL, NULL) };
    GPtrArray *backends = g_ptr_array_new();
    GPtrArray *jobs = g_ptr_array_new();

    (void)errp;
    /*
     * QEMU walks its lists of devices, then block jobs, then nodes; here
     * the devices and jobs are found as the parents of nodes.
     */
    for (BlockNode *bs = node_next(NULL); bs; bs = node_next(bs)) {
        for (BlockChild *c = node_next_parent(bs, NULL); c;
             c = node_next_parent(bs, c)) {
            if (child_parent_kind(c) == PARENT_BACKEND) {
                g_ptr_array_add(backends, c);
            } else if (node_info_block_job(c, NULL)) {
                Job *job = child_parent(c);
                if (!g_ptr_array_find(jobs, job, NULL)) {
                    g_ptr_array_add(jobs, job);
                }
            }
        }
    }
    for (guint i = 0; i < backends->len; i++) {
        BlockChild *c = backends->pdata[i];
        BlockBackend *blk = child_parent(c);
        graph_add_node(&g, blk, X_DBG_BLOCK_GRAPH_NODE_TYPE_BLOCK_BACKEND,
                       blk_name(blk));
        graph_add_edge(&g, blk, c);
    }
    for (guint i = 0; i < jobs->len; i++) {
        Job *job = jobs->pdata[i];
        BlockChild *any = job->nodes->data;
        graph_add_node(&g, job, X_DBG_BLOCK_GRAPH_NODE_TYPE_BLOCK_JOB,
                       node_info_block_job(any, NULL));
        for (GSList *l = job->nodes; l; l = l->next) {
            graph_add_edge(&g, job, l->data);
        }
    }
    for (BlockNode *bs = node_next(NULL); bs; bs = node_next(bs)) {
        graph_add_node(&g, bs, X_DBG_BLOCK_GRAPH_NODE_TYPE_BLOCK_DRIVER,
                       node_get_name(bs));
        /* QEMU keeps a node's children newest first. */
        GPtrArray *children = g_ptr_array_new();
        for (BlockChild *c = node_next_child(bs, NULL); c;
             c = node_next_child(bs, c)) {
            g_ptr_array_add(children, c);
        }
        for (guint i = children->len; i-- > 0;) {
            graph_add_edge(&g, bs, children->pdata[i]);
        }
        g_ptr_array_free(children, true);
    }
    g_ptr_array_free(backends, true);
    g_ptr_array_free(jobs, true);
    g_hash_table_destroy(g.ids);
    return g.graph;
}
