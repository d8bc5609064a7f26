/*
 * The node commands' handlers called directly, for what a daemon without
 * devices cannot show over QMP: a named device (BlockBackend) as a parent
 * in x-debug-query-block-graph and blockdev-del, and the counters and
 * BLOCK_WRITE_THRESHOLD that real writes and discards drive.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/qmp.h"
#include "strata/qmp-server.h"
#include "qapi-commands.h"
#include "qapi-visit.h"

static GPtrArray *events;       /* "NAME {data}" */

void qmp_event_send(const char *event, json_t *data)
{
    char *d = json_dumps(data, JSON_SORT_KEYS | JSON_COMPACT);
    g_ptr_array_add(events, g_strdup_printf("%s %s", event, d));
    free(d);
    json_decref(data);
}

void qmp_server_at_shutdown(QmpShutdownPhase phase, void (*fn)(void))
{
    (void)phase;
    (void)fn;
}

/* Events go nowhere here, throttled or not. */
void qmp_server_throttle_event(const char *event, unsigned period_ms)
{
    (void)event;
    (void)period_ms;
}

QmpSession *qmp_session_current(void)
{
    return NULL;
}

static char path[] = "/tmp/test-qmp-block-XXXXXX";

static void add(const char *json)
{
    GError *err = NULL;
    json_t *j = json_loads(json, 0, NULL);
    assert_non_null(j);
    BlockdevOptions *o = qapi_BlockdevOptions_from_json(j, &err);
    assert_null(err);
    qmp_blockdev_add(o, &err);
    assert_null(err);
    qapi_free_BlockdevOptions(o);
    json_decref(j);
}

static BlockDeviceInfo *node_info(const char *name)
{
    GError *err = NULL;
    BlockDeviceInfoList *l = qmp_query_named_block_nodes(true, true, &err);
    assert_null(err);
    BlockDeviceInfo *found = NULL;
    for (BlockDeviceInfoList *e = l; e; e = e->next) {
        if (!strcmp(e->value->node_name, name)) {
            found = e->value;
            e->value = NULL;
        }
    }
    /* The list frees its values; the one taken out is the caller's. */
    for (BlockDeviceInfoList *e = l; e; e = e->next) {
        if (!e->value) {
            e->value = g_new0(BlockDeviceInfo, 1);
        }
    }
    qapi_free_BlockDeviceInfoList(l);
    assert_non_null(found);
    return found;
}

static void test_device_parent(void **state)
{
    (void)state;
    GError *err = NULL;
    char *opts = g_strdup_printf(
        "{\"driver\": \"file\", \"node-name\": \"f0\", \"filename\": \"%s\","
        " \"discard\": \"unmap\"}", path);
    add(opts);
    g_free(opts);
    add("{\"driver\": \"raw\", \"node-name\": \"r0\", \"file\": \"f0\","
        " \"discard\": \"unmap\"}");

    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    blk_set_name(blk, "dev0");
    assert_true(blk_insert_node(blk, node_find("r0"), &err));

    /* The device first (QEMU lists devices, then jobs, then nodes). */
    XDbgBlockGraph *g = qmp_x_debug_query_block_graph(&err);
    assert_null(err);
    XDbgBlockGraphNode *dev = NULL;
    int nodes = 0;
    for (XDbgBlockGraphNodeList *n = g->nodes; n; n = n->next) {
        nodes++;
        if (n->value->type == X_DBG_BLOCK_GRAPH_NODE_TYPE_BLOCK_BACKEND) {
            dev = n->value;
        }
    }
    assert_int_equal(nodes, 3);
    assert_non_null(dev);
    assert_string_equal(dev->name, "dev0");
    assert_int_equal(dev->id, 1);
    bool root = false;
    for (XDbgBlockGraphEdgeList *e = g->edges; e; e = e->next) {
        if (e->value->parent == dev->id) {
            root = true;
            assert_string_equal(e->value->name, "root");
            /* Highest permission first, as QEMU builds the list. */
            assert_int_equal(e->value->perm->value, BLOCK_PERMISSION_WRITE);
            assert_int_equal(e->value->perm->next->value,
                             BLOCK_PERMISSION_CONSISTENT_READ);
            assert_null(e->value->perm->next->next);
        }
    }
    assert_true(root);
    qapi_free_XDbgBlockGraph(g);

    qmp_blockdev_del("r0", &err);
    assert_non_null(err);
    assert_string_equal(err->message, "Node r0 is in use");
    g_clear_error(&err);

    /* A write past the threshold: one event, and the threshold is off. */
    qmp_block_set_write_threshold("f0", 4096, &err);
    assert_null(err);
    char buf[8192];
    memset(buf, 0x5a, sizeof(buf));
    g_ptr_array_set_size(events, 0);
    assert_int_equal(blk_pwrite(blk, 0, 4096, buf, 0), 0);
    assert_int_equal(events->len, 0);
    assert_int_equal(blk_pwrite(blk, 0, 8192, buf, 0), 0);
    assert_int_equal(events->len, 1);
    assert_string_equal(events->pdata[0],
                        "BLOCK_WRITE_THRESHOLD {\"amount-exceeded\":4096,"
                        "\"node-name\":\"f0\",\"write-threshold\":4096}");
    BlockDeviceInfo *info = node_info("f0");
    assert_int_equal(info->write_threshold, 0);
    qapi_free_BlockDeviceInfo(info);
    assert_int_equal(blk_pwrite(blk, 8192, 8192, buf, 0), 0);
    assert_int_equal(events->len, 1);

    /* The furthest write and, for the file, the discards. */
    assert_int_equal(blk_pdiscard(blk, 0, 65536), 0);
    BlockStatsList *stats = qmp_query_blockstats(true, true, &err);
    assert_null(err);
    int seen = 0;
    for (BlockStatsList *s = stats; s; s = s->next) {
        BlockStats *b = s->value;
        assert_int_equal(b->stats->wr_highest_offset, 16384);
        assert_int_equal(b->stats->wr_operations, 0);
        if (!strcmp(b->node_name, "f0")) {
            seen++;
            assert_non_null(b->driver_specific);
            assert_int_equal(b->driver_specific->driver, BLOCKDEV_DRIVER_FILE);
            assert_int_equal(b->driver_specific->u.file.discard_nb_ok, 1);
            assert_int_equal(b->driver_specific->u.file.discard_bytes_ok,
                             65536);
            assert_null(b->parent);
        } else {
            seen++;
            assert_string_equal(b->node_name, "r0");
            assert_null(b->driver_specific);
            assert_non_null(b->parent);
            assert_string_equal(b->parent->node_name, "f0");
        }
    }
    assert_int_equal(seen, 2);
    qapi_free_BlockStatsList(stats);
    assert_null(qmp_query_blockstats(false, false, &err));
    assert_null(qmp_query_block(&err));
    assert_null(err);

    blk_unref(blk);
    qmp_blockdev_del("f0", &err);
    assert_non_null(err);
    assert_string_equal(err->message, "Block device f0 is in use");
    g_clear_error(&err);
    qmp_blockdev_del("r0", &err);
    assert_null(err);
    qmp_blockdev_del("f0", &err);
    assert_null(err);
    assert_null(node_next(NULL));
}

int main(void)
{
    int fd = mkstemp(path);
    if (fd < 0 || ftruncate(fd, 1 << 20) < 0) {
        return 1;
    }
    close(fd);
    events = g_ptr_array_new_with_free_func(g_free);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_parent),
    };
    int ret = cmocka_run_group_tests(tests, NULL, NULL);
    unlink(path);
    g_ptr_array_free(events, true);
    return ret;
}
