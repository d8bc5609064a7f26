/*
 * The snapshot handlers and `transaction` (qapi/cmd-snapshot.c,
 * qapi/cmd-transaction.c) with a device on the node, which the daemon's
 * iotests cannot have until exports exist: the device's edge moves to the
 * overlay and comes back when a later action fails; a node with a device
 * is a root for internal snapshots, its backing node is not.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <unistd.h>

#include "transaction.h"
#include "strata/backend.h"
#include "strata/block-ops.h"
#include "strata/units.h"
#include "qapi-commands.h"
#include "support.h"

static BlockNode *open_qcow2(const char *node_name, const char *file)
{
    GError *err = NULL;
    char *p = test_path(file);
    json_t *opts = json_pack("{s:s, s:s, s:n}", "driver", "qcow2",
                             "node-name", node_name, "backing");
    BlockNode *bs;

    if (!image_create("qcow2", p, json_pack("{s:i}", "size", MiB), &err)) {
        fail_msg("%s", err->message);
    }
    bs = node_open(p, opts, NODE_O_RDWR, &err);
    if (!bs) {
        fail_msg("%s: %s", p, err->message);
    }
    g_free(p);
    return bs;
}

static TransactionAction *snapshot_action(const char *node,
                                          const char *overlay)
{
    TransactionAction *a = g_new0(TransactionAction, 1);

    a->type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT;
    a->u.blockdev_snapshot.data = g_new0(BlockdevSnapshot, 1);
    a->u.blockdev_snapshot.data->node = g_strdup(node);
    a->u.blockdev_snapshot.data->overlay = g_strdup(overlay);
    return a;
}

static TransactionAction *internal_action(const char *device,
                                          const char *name)
{
    TransactionAction *a = g_new0(TransactionAction, 1);

    a->type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_INTERNAL_SYNC;
    a->u.blockdev_snapshot_internal_sync.data =
        g_new0(BlockdevSnapshotInternal, 1);
    a->u.blockdev_snapshot_internal_sync.data->device = g_strdup(device);
    a->u.blockdev_snapshot_internal_sync.data->name = g_strdup(name);
    return a;
}

static TransactionAction *abort_action(void)
{
    TransactionAction *a = g_new0(TransactionAction, 1);

    a->type = TRANSACTION_ACTION_KIND_ABORT;
    a->u.abort.data = g_new0(Abort, 1);
    return a;
}

static TransactionActionList *list_of(TransactionAction **actions, int n)
{
    TransactionActionList *head = NULL;

    for (int i = n - 1; i >= 0; i--) {
        TransactionActionList *l = g_new0(TransactionActionList, 1);
        l->value = actions[i];
        l->next = head;
        head = l;
    }
    return head;
}

static int snapshot_count(BlockNode *bs)
{
    NodeSnapshot *list = NULL;
    int n = node_snapshot_list(bs, &list);

    g_free(list);
    return n;
}

typedef struct Scenario {
    BlockNode *base, *ov1, *ov2;
    BlockBackend *blk;
} Scenario;

/* The handlers run in coroutines in the daemon: so here too. */
static void scenario_co(void *opaque)
{
    Scenario *sc = opaque;
    GError *err = NULL;
    SnapshotInfo *info;

    /* the device's edge moves to the overlay; base becomes read-only */
    qmp_blockdev_snapshot("base", "ov1", &err);
    assert_null(err);
    assert_ptr_equal(blk_node(sc->blk), sc->ov1);
    assert_ptr_equal(node_backing(sc->ov1), sc->base);
    assert_true(node_is_read_only(sc->base));

    /* base is a backing node now, ov1 (used by a device only) a root */
    qmp_blockdev_snapshot_internal_sync("base", "i0", &err);
    assert_non_null(err);
    assert_string_equal(err->message, "Need a root block node");
    g_clear_error(&err);

    /* the last action fails: the internal snapshot is deleted again and
     * the device's edge goes back to ov1 */
    TransactionAction *acts[] = {
        internal_action("ov1", "i1"),
        snapshot_action("ov1", "ov2"),
        abort_action(),
    };
    TransactionActionList *l = list_of(acts, 3);
    qmp_transaction(l, NULL, &err);
    assert_non_null(err);
    assert_string_equal(err->message,
                        "Transaction aborted using Abort action");
    g_clear_error(&err);
    qapi_free_TransactionActionList(l);
    assert_ptr_equal(blk_node(sc->blk), sc->ov1);
    assert_null(node_backing(sc->ov2));
    assert_false(node_is_read_only(sc->ov1));
    assert_int_equal(snapshot_count(sc->ov1), 0);

    /* the same without the abort: both actions take effect */
    TransactionAction *ok[] = {
        internal_action("ov1", "i1"),
        snapshot_action("ov1", "ov2"),
    };
    l = list_of(ok, 2);
    qmp_transaction(l, NULL, &err);
    assert_null(err);
    qapi_free_TransactionActionList(l);
    assert_ptr_equal(blk_node(sc->blk), sc->ov2);
    assert_ptr_equal(node_backing(sc->ov2), sc->ov1);
    assert_int_equal(snapshot_count(sc->ov1), 1);

    info = qmp_blockdev_snapshot_delete_internal_sync("ov2", NULL, "i1",
                                                      &err);
    assert_null(info);
    assert_string_equal(err->message, "Snapshot with id 'null' and name "
                        "'i1' does not exist on device 'ov2'");
    g_clear_error(&err);
}

static void test_device_edge_moves(void **state)
{
    Scenario sc = {
        .base = open_qcow2("base", "base.qcow2"),
        .ov1 = open_qcow2("ov1", "ov1.qcow2"),
        .ov2 = open_qcow2("ov2", "ov2.qcow2"),
    };
    GError *err = NULL;

    sc.blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, BLK_PERM_ALL);
    if (!blk_insert_node(sc.blk, sc.base, &err)) {
        fail_msg("%s", err->message);
    }
    co_run_sync(scenario_co, &sc);
    blk_unref(sc.blk);
    node_unref(sc.ov2);
    node_unref(sc.ov1);
    node_unref(sc.base);
    assert_null(node_next(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_edge_moves),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
