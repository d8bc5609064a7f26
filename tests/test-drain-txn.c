/*
 * What a `transaction` keeps across the drains of its later actions.  The
 * daemon runs each client's command in a coroutine, and a drain begun in
 * one waits in the loop (block/drain.c), where another client's command
 * runs: here a job-cancel of the job a blockdev-backup action created,
 * while the next action's drain waits.  QEMU's transaction never lets a
 * command run there; strata must not use the job after it is gone.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "transaction.h"
#include "strata/block-ops.h"
#include "strata/coroutine.h"
#include "strata/dirty-bitmap.h"
#include "strata/iothread.h"
#include "strata/job.h"
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

static TransactionAction *backup_action(const char *id, const char *device,
                                        const char *target)
{
    TransactionAction *a = g_new0(TransactionAction, 1);

    a->type = TRANSACTION_ACTION_KIND_BLOCKDEV_BACKUP;
    a->u.blockdev_backup.data = g_new0(BlockdevBackup, 1);
    a->u.blockdev_backup.data->job_id = g_strdup(id);
    a->u.blockdev_backup.data->device = g_strdup(device);
    a->u.blockdev_backup.data->target = g_strdup(target);
    a->u.blockdev_backup.data->sync = MIRROR_SYNC_MODE_FULL;
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

typedef struct Race {
    bool fail;          /* a last action fails: the transaction aborts */
    bool in_txn;
    bool cancelled;     /* bk1 was cancelled while the transaction ran */
    bool txn_ok;
    bool done;
} Race;

/*
 * Another client's job-cancel of bk1, as soon as the transaction has
 * created it and waits in a later action's drain.
 */
static void cancel_bh(void *opaque)
{
    Race *r = opaque;
    Job *job = job_find("bk1");

    if (!r->in_txn) {
        return;
    }
    if (!job || !job_find("bk2")) {
        loop_bh(cancel_bh, r);
        return;
    }
    GError *err = NULL;
    if (!job_user_cancel(job, true, &err)) {
        fail_msg("job-cancel: %s", err->message);
    }
    r->cancelled = true;
}

static void txn_co(void *opaque)
{
    Race *r = opaque;
    GError *err = NULL;
    TransactionAction *acts[] = {
        backup_action("bk1", "a", "ta"),
        backup_action("bk2", "b", "tb"),
        /* a third drain, after bk2 exists: the cancel comes there */
        backup_action("bk3", "c", "tc"),
        abort_action(),
    };
    TransactionActionList *l = list_of(acts, r->fail ? 4 : 3);

    if (!r->fail) {
        qapi_free_TransactionAction(acts[3]);
    }
    loop_bh(cancel_bh, r);
    r->in_txn = true;
    qmp_transaction(l, NULL, &err);
    r->in_txn = false;
    r->txn_ok = err == NULL;
    g_clear_error(&err);
    qapi_free_TransactionActionList(l);
    r->done = true;
}

static void run_race(bool fail)
{
    const char *names[] = { "a", "b", "c", "ta", "tb", "tc" };
    BlockNode *n[6];
    Race r = { .fail = fail };

    for (int i = 0; i < 6; i++) {
        g_autofree char *file = g_strdup_printf("%s%d.qcow2", names[i], fail);
        n[i] = open_qcow2(names[i], file);
    }
    co_enter(co_create(txn_co, &r));
    LOOP_WAIT_WHILE(!r.done);
    assert_true(r.cancelled);
    assert_int_equal(r.txn_ok, !fail);
    assert_null(job_find("bk1"));
    /* The others finish (or were cancelled by the abort). */
    LOOP_WAIT_WHILE(job_find("bk2") || job_find("bk3"));
    for (int i = 0; i < 6; i++) {
        node_unref(n[i]);
    }
    assert_null(node_next(NULL));
}

/* The transaction commits: the cancelled job is not started. */
static void test_backup_job_cancelled_then_commit(void **state)
{
    run_race(false);
}

/* The transaction aborts: the cancelled job is not cancelled again. */
static void test_backup_job_cancelled_then_abort(void **state)
{
    run_race(true);
}

/* ---- An overlay's backing edge, taken off by another client ---- */

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

typedef struct Unhook {
    BlockNode *ov;
    bool in_txn, unhooked, done;
    GError *err;
} Unhook;

/* blockdev-reopen of the overlay with backing=null, from another client,
 * once the transaction has appended it and waits in the next drain. */
static void unhook_bh(void *opaque)
{
    Unhook *u = opaque;

    if (!u->in_txn) {
        return;
    }
    if (!node_backing(u->ov) || !job_find("bk1")) {
        loop_bh(unhook_bh, u);
        return;
    }
    if (!node_reopen(u->ov, json_pack("{s:n}", "backing"), false, &u->err)) {
        return;
    }
    u->unhooked = true;
}

static void unhook_co(void *opaque)
{
    Unhook *u = opaque;
    GError *err = NULL;
    TransactionAction *acts[] = {
        snapshot_action("a", "ov"),
        backup_action("bk1", "b", "tb"),
        backup_action("bk2", "c", "tc"),
        abort_action(),
    };
    TransactionActionList *l = list_of(acts, 4);

    loop_bh(unhook_bh, u);
    u->in_txn = true;
    qmp_transaction(l, NULL, &err);
    u->in_txn = false;
    assert_non_null(err);
    g_clear_error(&err);
    qapi_free_TransactionActionList(l);
    u->done = true;
}

/*
 * The abort of blockdev-snapshot took off the backing edge it had made,
 * kept as a pointer since prepare: another client's blockdev-reopen had
 * freed it meanwhile.  The abort looks the edge up again.
 */
static void test_snapshot_backing_gone_then_abort(void **state)
{
    const char *names[] = { "a", "ov", "b", "tb", "c", "tc" };
    BlockNode *n[6];
    Unhook u = { 0 };

    for (int i = 0; i < 6; i++) {
        g_autofree char *file = g_strdup_printf("u-%s.qcow2", names[i]);
        n[i] = open_qcow2(names[i], file);
    }
    u.ov = n[1];
    co_enter(co_create(unhook_co, &u));
    LOOP_WAIT_WHILE(!u.done);
    if (u.err) {
        fail_msg("blockdev-reopen: %s", u.err->message);
    }
    assert_true(u.unhooked);
    assert_null(node_backing(n[1]));
    LOOP_WAIT_WHILE(job_find("bk1") || job_find("bk2"));
    for (int i = 0; i < 6; i++) {
        node_unref(n[i]);
    }
    assert_null(node_next(NULL));
}

/* ---- Bitmaps the actions changed, removed by another client ---- */

static TransactionAction *bitmap_add_action(const char *node,
                                            const char *name)
{
    TransactionAction *a = g_new0(TransactionAction, 1);

    a->type = TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_ADD;
    a->u.block_dirty_bitmap_add.data = g_new0(BlockDirtyBitmapAdd, 1);
    a->u.block_dirty_bitmap_add.data->node = g_strdup(node);
    a->u.block_dirty_bitmap_add.data->name = g_strdup(name);
    return a;
}

static TransactionAction *bitmap_clear_action(const char *node,
                                              const char *name)
{
    TransactionAction *a = g_new0(TransactionAction, 1);

    a->type = TRANSACTION_ACTION_KIND_BLOCK_DIRTY_BITMAP_CLEAR;
    a->u.block_dirty_bitmap_clear.data = g_new0(BlockDirtyBitmap, 1);
    a->u.block_dirty_bitmap_clear.data->node = g_strdup(node);
    a->u.block_dirty_bitmap_clear.data->name = g_strdup(name);
    return a;
}

typedef struct BitmapsGone {
    bool in_txn, removed, done;
} BitmapsGone;

/* block-dirty-bitmap-remove of both, from another client, once the
 * transaction made them and waits in the backup action's drain. */
static void remove_bitmaps_bh(void *opaque)
{
    BitmapsGone *g = opaque;
    GError *err = NULL;

    if (!g->in_txn) {
        return;
    }
    if (!job_find("bk1")) {
        loop_bh(remove_bitmaps_bh, g);
        return;
    }
    qmp_block_dirty_bitmap_remove("a", "added", &err);
    g_assert_no_error(err);
    qmp_block_dirty_bitmap_remove("a", "cleared", &err);
    g_assert_no_error(err);
    g->removed = true;
}

static void bitmaps_gone_co(void *opaque)
{
    BitmapsGone *g = opaque;
    GError *err = NULL;
    TransactionAction *acts[] = {
        bitmap_add_action("a", "added"),
        bitmap_clear_action("a", "cleared"),
        backup_action("bk1", "b", "tb"),
        backup_action("bk2", "c", "tc"),
        abort_action(),
    };
    TransactionActionList *l = list_of(acts, 5);

    loop_bh(remove_bitmaps_bh, g);
    g->in_txn = true;
    qmp_transaction(l, NULL, &err);
    g->in_txn = false;
    assert_non_null(err);
    g_clear_error(&err);
    qapi_free_TransactionActionList(l);
    g->done = true;
}

/*
 * The aborts of block-dirty-bitmap-add and -clear used the bitmaps they
 * changed at prepare: add's asserted it was still there (the daemon
 * aborted), clear's put the old bits back into freed memory.  They look
 * them up again and leave alone what is gone.
 */
static void test_bitmaps_removed_then_abort(void **state)
{
    const char *names[] = { "a", "b", "tb", "c", "tc" };
    BlockNode *n[5];
    BitmapsGone g = { 0 };
    GError *err = NULL;

    for (int i = 0; i < 5; i++) {
        g_autofree char *file = g_strdup_printf("bm-%s.qcow2", names[i]);
        n[i] = open_qcow2(names[i], file);
    }
    qmp_block_dirty_bitmap_add("a", "cleared", false, 0, false, false,
                               false, false, &err);
    g_assert_no_error(err);
    co_enter(co_create(bitmaps_gone_co, &g));
    LOOP_WAIT_WHILE(!g.done);
    assert_true(g.removed);
    assert_null(node_find_dirty_bitmap(n[0], "added"));
    assert_null(node_find_dirty_bitmap(n[0], "cleared"));
    LOOP_WAIT_WHILE(job_find("bk1") || job_find("bk2"));
    for (int i = 0; i < 5; i++) {
        node_unref(n[i]);
    }
    assert_null(node_next(NULL));
}

/* ---- blockdev-backup moving its target: the source deleted there ---- */

typedef struct DelSource {
    BlockNode *src, *target;
    int phase;          /* target drained by: 1 drain_all, 3 the move */
    bool deleted, done, ok;
} DelSource;

/*
 * Another client's blockdev-del of the source (its only reference) while
 * the action moves the target to the source's iothread: the target's
 * second drained section in the transaction, after the transaction's own
 * drain of everything.
 */
static void del_source_bh(void *opaque)
{
    DelSource *d = opaque;
    bool q = node_is_quiesced(d->target);

    if (d->done) {
        return;
    }
    if (d->phase % 2 == 0 ? q : !q) {
        d->phase++;
    }
    if (d->phase < 3) {
        loop_bh(del_source_bh, d);
        return;
    }
    node_unref(d->src);
    d->deleted = true;
}

static void del_source_co(void *opaque)
{
    DelSource *d = opaque;
    GError *err = NULL;
    TransactionAction *acts[] = { backup_action("bk1", "a", "ta") };
    TransactionActionList *l = list_of(acts, 1);

    loop_bh(del_source_bh, d);
    qmp_transaction(l, NULL, &err);
    d->ok = err == NULL;
    if (err) {
        print_message("transaction: %s\n", err->message);
    }
    g_clear_error(&err);
    qapi_free_TransactionActionList(l);
    d->done = true;
}

/*
 * blockdev_backup_prepare() looked up source and target, then moved the
 * target (drains: the loop runs) and used both without holding them.
 */
static void test_backup_source_deleted_in_move(void **state)
{
    GError *err = NULL;
    IOThreadParams p;
    iothread_params_default(&p);
    IOThread *t = iothread_new("drtxn", &p, &err);
    assert_non_null(t);
    DelSource d = {
        .src = open_qcow2("a", "ds-a.qcow2"),
        .target = open_qcow2("ta", "ds-ta.qcow2"),
    };
    assert_true(node_set_loop(d.src, iothread_loop(t), &err));

    co_enter(co_create(del_source_co, &d));
    LOOP_WAIT_WHILE(!d.done);
    assert_true(d.deleted);
    /* The job held the source it was given, and ran on it. */
    assert_true(d.ok);
    LOOP_WAIT_WHILE(job_find("bk1"));
    assert_null(node_find("a"));
    node_unref(d.target);
    assert_null(node_next(NULL));
    iothread_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backup_job_cancelled_then_commit),
        cmocka_unit_test(test_backup_job_cancelled_then_abort),
        cmocka_unit_test(test_snapshot_backing_gone_then_abort),
        cmocka_unit_test(test_bitmaps_removed_then_abort),
        cmocka_unit_test(test_backup_source_deleted_in_move),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
