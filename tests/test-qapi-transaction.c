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
#include "strata/coroutine.h"
#include "strata/iov.h"
#include "strata/loop.h"
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

/* ---- A guest write held while a transaction runs ---- */

typedef struct HeldWrite {
    BlockBackend *blk;          /* on node a */
    BlockNode *a, *b, *ov1;
    uint8_t buf[4096];
    IOVec qiov;
    bool in_txn;                /* qmp_transaction is running */
    bool issued_in_txn;         /* the write was issued inside it */
    bool quiesced_at_issue;     /* ... while its device was held back */
    bool done;
    int ret;
} HeldWrite;

static void held_write_cb(void *opaque, int ret)
{
    HeldWrite *h = opaque;

    h->ret = ret;
    h->done = true;
}

/*
 * Queued before the transaction: the loop first runs inside it, when the
 * first action drains node a (the BH queue is FIFO, so this runs before
 * the drain's own wait), which is when a VM's held write would come.
 */
static void issue_write_bh(void *opaque)
{
    HeldWrite *h = opaque;

    /* A drain begun in a coroutine quiesces from a BH queued after this
     * one (block/drain.c): come back until node a is drained. */
    if (h->in_txn && !node_is_quiesced(h->a)) {
        loop_bh(issue_write_bh, h);
        return;
    }
    h->issued_in_txn = h->in_txn;
    h->quiesced_at_issue = node_is_quiesced(h->a);
    memset(h->buf, 0x5a, sizeof(h->buf));
    iovec_init_buf(&h->qiov, h->buf, sizeof(h->buf));
    blk_aio_pwritev(h->blk, 0, &h->qiov, 0, held_write_cb, h);
}

static TransactionAction *snapshot_sync_action(const char *node,
                                               const char *file)
{
    TransactionAction *a = g_new0(TransactionAction, 1);

    a->type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT_SYNC;
    a->u.blockdev_snapshot_sync.data = g_new0(BlockdevSnapshotSync, 1);
    a->u.blockdev_snapshot_sync.data->node_name = g_strdup(node);
    a->u.blockdev_snapshot_sync.data->snapshot_file = g_strdup(file);
    a->u.blockdev_snapshot_sync.data->format = g_strdup("qcow2");
    return a;
}

static void held_write_co(void *opaque)
{
    HeldWrite *h = opaque;
    GError *err = NULL;
    char *missing = test_path("no-such-dir/b-ov.qcow2");
    /* the second action fails for certain: its overlay cannot be made */
    TransactionAction *acts[] = {
        snapshot_action("a", "ov1"),
        snapshot_sync_action("b", missing),
    };
    TransactionActionList *l = list_of(acts, 2);

    loop_bh(issue_write_bh, h);
    h->in_txn = true;
    qmp_transaction(l, NULL, &err);
    h->in_txn = false;
    assert_non_null(err);
    g_clear_error(&err);
    qapi_free_TransactionActionList(l);
    g_free(missing);
}

/*
 * blockdev-snapshot's overlay must stay held back (drained) until the
 * transaction ends, as in QEMU 7.2 (there new_bs is quiesced through its
 * drained backing child old_bs): else a write held at the device resumes
 * when the device moves to the overlay, lands in it, and is gone when a
 * later action fails and the overlay comes off again.
 */
static void test_held_write_not_lost(void **state)
{
    HeldWrite h = {
        .a = open_qcow2("a", "a.qcow2"),
        .b = open_qcow2("b", "b.qcow2"),
        .ov1 = open_qcow2("ov1", "a-ov1.qcow2"),
    };
    GError *err = NULL;
    uint8_t back[4096];

    h.blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE, BLK_PERM_ALL);
    if (!blk_insert_node(h.blk, h.a, &err)) {
        fail_msg("%s", err->message);
    }
    co_run_sync(held_write_co, &h);
    assert_true(h.issued_in_txn);
    assert_true(h.quiesced_at_issue);
    LOOP_WAIT_WHILE(!h.done);
    iovec_destroy(&h.qiov);
    assert_int_equal(h.ret, 0);
    /* the device is back on a, and so must be what it wrote */
    assert_ptr_equal(blk_node(h.blk), h.a);
    assert_null(node_backing(h.ov1));
    assert_int_equal(blk_pread(h.blk, 0, sizeof(back), back, 0), 0);
    assert_memory_equal(back, h.buf, sizeof(back));
    BlockBackend *peek = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    if (!blk_insert_node(peek, h.ov1, &err)) {
        fail_msg("%s", err->message);
    }
    assert_int_equal(blk_pread(peek, 0, sizeof(back), back, 0), 0);
    blk_unref(peek);
    for (size_t i = 0; i < sizeof(back); i++) {
        if (back[i]) {
            fail_msg("the write landed in the overlay taken off again");
        }
    }
    blk_unref(h.blk);
    node_unref(h.ov1);
    node_unref(h.b);
    node_unref(h.a);
    assert_null(node_next(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_device_edge_moves),
        cmocka_unit_test(test_held_write_not_lost),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
