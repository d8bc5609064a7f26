/*
 * The node graph: permission conflicts and complete rollback, freeze
 * counters, multi-node reopen (commit and abort), drain.
 * Graphs are built from raw over null-co, which needs no files.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block-driver.h"
#include "strata/loop.h"

/*
 * A minimal format: metadata and data in its "file" child, like qcow2, so
 * that the file edge takes write whenever the format is writable.
 */
static int fmt_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    return node_open_child(bs, options, "file",
                           CHILD_ROLE_IMAGE | CHILD_ROLE_PRIMARY, false,
                           errp) ? 0 : -1;
}

static int fmt_reopen_prepare(ReopenState *rs, GError **errp)
{
    return 0;
}

static const BlockDriver bdrv_test_fmt = {
    .format_name = "test-fmt",
    .is_format = true,
    .open = fmt_open,
    .reopen_prepare = fmt_reopen_prepare,
};

static BlockNode *open_raw_null(const char *name, bool rw)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s}}", "driver", "raw",
                          "node-name", name, "file", "driver", "null-co",
                          "node-name", "", "size", "1M");
    /* Let the child get an automatic name. */
    json_object_del(json_object_get(o, "file"), "node-name");
    BlockNode *bs = node_open(NULL, o, rw ? NODE_O_RDWR : 0, &err);
    if (!bs) {
        fail_msg("open failed: %s", err->message);
    }
    return bs;
}

/* A parent that is neither node nor backend: stands for a job. */
static char *job_desc(BlockChild *c)
{
    return g_strdup_printf("commit job '%s'", (const char *)c->opaque);
}

static int job_drained;

static void job_drained_begin(BlockChild *c)
{
    job_drained++;
}

static void job_drained_end(BlockChild *c)
{
    job_drained--;
}

static const BlockChildClass job_class = {
    .kind = "job",
    .get_parent_desc = job_desc,
    .drained_begin = job_drained_begin,
    .drained_end = job_drained_end,
};

static void test_conflict_message_and_rollback(void **state)
{
    GError *err = NULL;
    BlockNode *top = open_raw_null("top", true);
    BlockNode *bottom = child_node(node_find_child(top, "file"));

    BlockBackend *writer = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                   BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);
    blk_set_name(writer, "drive0");
    assert_true(blk_insert_node(writer, top, &err));
    uint64_t perm, shared;
    node_get_cumulative_perm(bottom, &perm, &shared);
    assert_true(perm & BLK_PERM_WRITE);

    /* A job on the bottom node that does not share write must be refused. */
    BlockChild *c = child_attach(bottom, "target", &job_class, CHILD_ROLE_DATA,
                                 BLK_PERM_CONSISTENT_READ,
                                 BLK_PERM_CONSISTENT_READ, "c0", &err);
    assert_null(c);
    assert_non_null(err);
    char *expect = g_strdup_printf(
        "Permission conflict on node '%s': permissions 'write' are both "
        "required by node 'top' (uses node '%s' as 'file' child) and unshared "
        "by commit job 'c0' (uses node '%s' as 'target' child).",
        node_get_name(bottom), node_get_name(bottom), node_get_name(bottom));
    assert_string_equal(err->message, expect);
    g_free(expect);
    g_clear_error(&err);

    /* Rolled back: the bottom node has only its old parent and perms. */
    assert_ptr_equal(node_next_parent(bottom, NULL), node_find_child(top, "file"));
    assert_null(node_next_parent(bottom, node_find_child(top, "file")));
    uint64_t perm2, shared2;
    node_get_cumulative_perm(bottom, &perm2, &shared2);
    assert_int_equal(perm, perm2);
    assert_int_equal(shared, shared2);

    /* A second backend asking for write on 'top' conflicts at top itself. */
    BlockBackend *other = blk_new(BLK_PERM_CONSISTENT_READ,
                                  BLK_PERM_CONSISTENT_READ);
    assert_false(blk_insert_node(other, top, &err));
    assert_non_null(strstr(err->message, "required by block device 'drive0'"));
    assert_non_null(strstr(err->message, "unshared by a block device"));
    g_clear_error(&err);

    /* Sharing everything makes it compatible. */
    blk_unref(other);
    other = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_true(blk_insert_node(other, top, &err));

    /* Changing a perm that would conflict fails and leaves it as it was. */
    assert_false(blk_set_perm(writer, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                              0, &err));
    g_clear_error(&err);
    blk_get_perm(writer, &perm, &shared);
    assert_int_equal(shared, BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE);

    blk_unref(other);
    blk_unref(writer);
    node_unref(top);
    assert_null(node_find("top"));
}

static void test_read_only_refuses_writer(void **state)
{
    GError *err = NULL;
    BlockNode *ro = open_raw_null("ro", false);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_false(blk_insert_node(blk, ro, &err));
    assert_string_equal(err->message, "Block node is read-only");
    g_clear_error(&err);
    assert_null(node_next_parent(ro, NULL));
    blk_unref(blk);
    node_unref(ro);
}

static void test_freeze(void **state)
{
    GError *err = NULL;
    BlockNode *top = open_raw_null("ftop", true);
    BlockChild *file = node_find_child(top, "file");
    BlockNode *spare = open_raw_null("spare", true);
    BlockNode *spare_file = child_node(node_find_child(spare, "file"));

    /* Anyone can freeze: a user, then a job, nesting. */
    child_freeze(file, "user");
    child_freeze(file, "commit job 'c1'");
    assert_int_equal(child_frozen_count(file), 2);
    assert_false(child_replace_node(file, spare_file, &err));
    assert_non_null(strstr(err->message, "frozen by commit job 'c1'"));
    assert_non_null(strstr(err->message, "'file' link"));
    g_clear_error(&err);
    assert_false(child_detach(file, &err));
    g_clear_error(&err);

    child_unfreeze(file, "commit job 'c1'");
    assert_int_equal(child_frozen_count(file), 1);
    assert_false(child_detach(file, &err));
    assert_non_null(strstr(err->message, "frozen by user"));
    g_clear_error(&err);

    child_unfreeze(file, "user");
    assert_int_equal(child_frozen_count(file), 0);
    /* Unfrozen: retargeting works (and moves the reference). */
    BlockNode *old = child_node(file);
    node_ref(old);
    assert_true(child_replace_node(file, spare_file, &err));
    assert_ptr_equal(child_node(file), spare_file);
    node_unref(old);

    node_unref(top);
    node_unref(spare);
}

static void test_chain_freeze(void **state)
{
    GError *err = NULL;
    BlockNode *top = open_raw_null("ctop", true);
    BlockNode *bottom = child_node(node_find_child(top, "file"));
    /* raw without a window filters its file: the chain is top -> bottom. */
    assert_true(chain_freeze(top, bottom, "stream job 's0'", &err));
    assert_int_equal(child_frozen_count(node_find_child(top, "file")), 1);
    chain_unfreeze(top, bottom, "stream job 's0'");
    assert_int_equal(child_frozen_count(node_find_child(top, "file")), 0);
    node_unref(top);
}

static void test_reopen_multiple_commit(void **state)
{
    GError *err = NULL;
    BlockNode *a = open_raw_null("ra", false);
    BlockNode *b = open_raw_null("rb", false);
    ReopenQueue *q = reopen_queue_add(NULL, a, NULL, false);
    q = reopen_queue_add(q, b, NULL, false);
    assert_true(reopen_multiple(q, &err));
    assert_false(node_is_read_only(a));
    assert_false(node_is_read_only(b));
    /* Children follow their parent's read-only state. */
    assert_false(node_is_read_only(child_node(node_find_child(a, "file"))));

    /* Writers may attach now. */
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, a, &err));
    blk_unref(blk);
    node_unref(a);
    node_unref(b);
}

static void test_reopen_multiple_abort(void **state)
{
    GError *err = NULL;
    BlockNode *a = open_raw_null("aa", true);
    BlockNode *b = open_raw_null("ab", true);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, b, &err));
    BlockNode *bfile = child_node(node_find_child(b, "file"));
    uint64_t perm, shared, perm2, shared2;
    node_get_cumulative_perm(bfile, &perm, &shared);

    /* a could become read-only, b cannot (it has a writer): neither does. */
    ReopenQueue *q = reopen_queue_add(NULL, a, NULL, true);
    q = reopen_queue_add(q, b, NULL, true);
    assert_false(reopen_multiple(q, &err));
    assert_string_equal(err->message,
                        "Read-only block node 'ab' cannot support read-write users");
    g_clear_error(&err);
    assert_false(node_is_read_only(a));
    assert_false(node_is_read_only(b));
    assert_false(node_is_read_only(child_node(node_find_child(a, "file"))));
    node_get_cumulative_perm(bfile, &perm2, &shared2);
    assert_int_equal(perm, perm2);
    assert_int_equal(shared, shared2);

    /* An option that cannot change aborts the whole queue too. */
    q = reopen_queue_add(NULL, a, json_pack("{s:s}", "node-name", "other"), true);
    assert_false(reopen_multiple(q, &err));
    assert_string_equal(err->message, "Cannot change the option 'node-name'");
    g_clear_error(&err);
    assert_false(node_is_read_only(a));

    /* And an unknown option is named. */
    q = reopen_queue_add(NULL, a, json_pack("{s:s}", "bogus", "1"), false);
    assert_false(reopen_multiple(q, &err));
    assert_non_null(strstr(err->message, "'bogus'"));
    g_clear_error(&err);

    blk_unref(blk);
    node_unref(a);
    node_unref(b);
}

static void test_reopen_transition_union(void **state)
{
    GError *err = NULL;
    BlockNode *top = open_raw_null("ut", true);
    BlockNode *bottom = child_node(node_find_child(top, "file"));
    /* A job on the bottom node that shares everything but resize. */
    BlockChild *job = child_attach(bottom, "target", &job_class,
                                   CHILD_ROLE_DATA, BLK_PERM_CONSISTENT_READ,
                                   BLK_PERM_ALL & ~BLK_PERM_RESIZE, "j", &err);
    assert_non_null(job);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, top, &err));
    /* Reopen to read-only fails while the writer is there... */
    assert_false(node_reopen(top, NULL, true, &err));
    g_clear_error(&err);
    /* ...and succeeds once it has gone; the job stays attached. */
    blk_unref(blk);
    assert_true(node_reopen(top, NULL, true, &err));
    assert_true(node_is_read_only(top));
    assert_true(node_is_read_only(bottom));
    assert_true(child_detach(job, &err));
    node_unref(top);
}

typedef struct {
    BlockBackend *blk;
    int done;
    int ret;
} DrainIo;

static void drain_io_cb(void *opaque, int ret)
{
    DrainIo *d = opaque;
    d->done++;
    d->ret = ret;
}

static void test_reopen_format_read_only(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:{s:s}}", "driver", "test-fmt",
                          "node-name", "fmt", "file", "driver", "null-co");
    BlockNode *fmt = node_open(NULL, o, NODE_O_RDWR, &err);
    assert_non_null(fmt);
    BlockNode *file = child_node(node_find_child(fmt, "file"));
    uint64_t perm, shared;
    node_get_cumulative_perm(file, &perm, &shared);
    assert_true(perm & BLK_PERM_WRITE); /* metadata writes */
    /* Both go read-only together: the old write on the file edge must not
     * stop the file from becoming read-only. */
    if (!node_reopen(fmt, NULL, true, &err)) {
        fail_msg("%s", err->message);
    }
    assert_true(node_is_read_only(file));
    node_get_cumulative_perm(file, &perm, &shared);
    assert_false(perm & BLK_PERM_WRITE);
    /* And back. */
    assert_true(node_reopen(fmt, NULL, false, &err));
    node_get_cumulative_perm(file, &perm, &shared);
    assert_true(perm & BLK_PERM_WRITE);
    node_unref(fmt);
}

static void test_replace_while_drained(void **state)
{
    GError *err = NULL;
    BlockNode *a = open_raw_null("repa", true);
    BlockNode *b = open_raw_null("repb", true);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, a, &err));
    node_drain_begin(a);
    assert_true(node_replace(a, b, &err));
    node_drain_end(a);
    /* The backend is not left quiesced: a read completes. */
    char buf[512];
    assert_int_equal(blk_pread(blk, 0, sizeof(buf), buf, 0), 0);
    blk_unref(blk);
    node_unref(a);
    node_unref(b);
}

static void test_failed_attach_while_drained(void **state)
{
    GError *err = NULL;
    BlockNode *ro = open_raw_null("fad", false);
    node_drain_begin(ro);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_false(blk_insert_node(blk, ro, &err));
    g_clear_error(&err);
    node_drain_end(ro);
    /* Attach again without a drain: requests must not hang. */
    blk_set_perm(blk, BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL, NULL);
    assert_true(blk_insert_node(blk, ro, &err));
    char buf[512];
    assert_int_equal(blk_pread(blk, 0, sizeof(buf), buf, 0), 0);
    blk_unref(blk);
    node_unref(ro);
}

typedef struct {
    BlockNode *bs;
    bool done;
} CoDrain;

static void co_drain_entry(void *opaque)
{
    CoDrain *d = opaque;
    node_drain_begin(d->bs);
    d->done = true;
    node_drain_end(d->bs);
}

static void test_drain_from_coroutine(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:i}", "driver", "null-co", "size", "1M",
                          "latency-ns", 5000000);
    BlockBackend *blk = blk_new_open(NULL, o, NODE_O_RDWR, &err);
    DrainIo io = { blk, 0, 0 };
    char buf[512];
    IOVec qiov;
    iovec_init_buf(&qiov, buf, sizeof(buf));
    blk_aio_preadv(blk, 0, &qiov, 0, drain_io_cb, &io);
    CoDrain d = { blk_node(blk), false };
    co_enter(co_create(co_drain_entry, &d));
    /* The coroutine waits for the request before it goes on. */
    LOOP_WAIT_WHILE(!d.done);
    assert_int_equal(io.done, 1);
    iovec_destroy(&qiov);
    blk_unref(blk);
}

static void test_drain(void **state)
{
    GError *err = NULL;
    BlockNode *top = open_raw_null("dt", true);
    BlockNode *bottom = child_node(node_find_child(top, "file"));
    BlockChild *job = child_attach(bottom, "src", &job_class, CHILD_ROLE_DATA,
                                   BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL,
                                   "d", &err);
    job_drained = 0;
    /* Draining the top quiesces the subtree and its non-node parents. */
    node_drain_begin(top);
    assert_true(node_is_quiesced(top));
    assert_true(node_is_quiesced(bottom));
    assert_int_equal(job_drained, 1);
    node_drain_begin(bottom); /* nests */
    assert_int_equal(job_drained, 2);
    node_drain_end(bottom);
    assert_true(node_is_quiesced(bottom));
    node_drain_end(top);
    assert_false(node_is_quiesced(top));
    assert_false(node_is_quiesced(bottom));
    assert_int_equal(job_drained, 0);
    /* Draining the bottom reaches up to the top as well. */
    node_drain_begin(bottom);
    assert_true(node_is_quiesced(top));
    node_drain_end(bottom);
    assert_true(child_detach(job, &err));
    node_unref(top);
}

static void test_drain_waits_for_requests(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:i}", "driver", "null-co", "size", "1M",
                          "latency-ns", 5000000);
    BlockBackend *blk = blk_new_open(NULL, o, NODE_O_RDWR, &err);
    assert_non_null(blk);
    DrainIo d = { blk, 0, 0 };
    char buf[512];
    IOVec qiov;
    iovec_init_buf(&qiov, buf, sizeof(buf));
    for (int i = 0; i < 4; i++) {
        blk_aio_preadv(blk, 0, &qiov, 0, drain_io_cb, &d);
    }
    assert_true(blk_in_flight(blk) > 0);
    /* The drain returns only when every request and callback is done. */
    node_drain_begin(blk_node(blk));
    assert_int_equal(d.done, 4);
    /* A request made while drained waits for the end of the drain. */
    blk_aio_preadv(blk, 0, &qiov, 0, drain_io_cb, &d);
    for (int i = 0; i < 10; i++) {
        loop_iterate(false);
    }
    assert_int_equal(d.done, 4);
    node_drain_end(blk_node(blk));
    LOOP_WAIT_WHILE(d.done < 5);
    iovec_destroy(&qiov);
    blk_unref(blk);
}

static void test_open_errors(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s}", "driver", "null-co", "bogus", "1");
    assert_null(node_open(NULL, o, 0, &err));
    assert_string_equal(err->message,
                        "Block protocol 'null-co' doesn't support the option 'bogus'");
    g_clear_error(&err);
    o = json_pack("{s:s}", "driver", "nosuch");
    assert_null(node_open(NULL, o, 0, &err));
    assert_string_equal(err->message, "Unknown driver 'nosuch'");
    g_clear_error(&err);
    o = json_pack("{s:s, s:s}", "driver", "null-co", "read-zeroes", "maybe");
    assert_null(node_open(NULL, o, 0, &err));
    assert_string_equal(err->message, "Parameter 'read-zeroes' expects 'on' or 'off'");
    g_clear_error(&err);
    o = json_pack("{s:s, s:s}", "driver", "null-co", "node-name", "1bad");
    assert_null(node_open(NULL, o, 0, &err));
    assert_string_equal(err->message, "Invalid node-name: '1bad'");
    g_clear_error(&err);
    BlockNode *a = open_raw_null("dup", false);
    o = json_pack("{s:s, s:s}", "driver", "null-co", "node-name", "dup");
    assert_null(node_open(NULL, o, 0, &err));
    assert_string_equal(err->message, "Duplicate nodes with node-name='dup'");
    g_clear_error(&err);
    node_unref(a);
    /* Nothing half-open stays registered. */
    BlockNode *left = node_next(NULL);
    if (left) {
        fail_msg("node '%s' (%s) left open", node_get_name(left),
                 node_get_format_name(left));
    }
}

static void test_auto_names(void **state)
{
    GError *err = NULL;
    BlockNode *bs = node_open(NULL, json_pack("{s:s}", "driver", "null-co"),
                              0, &err);
    assert_non_null(bs);
    assert_true(g_str_has_prefix(node_get_name(bs), "#block"));
    node_unref(bs);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conflict_message_and_rollback),
        cmocka_unit_test(test_read_only_refuses_writer),
        cmocka_unit_test(test_freeze),
        cmocka_unit_test(test_chain_freeze),
        cmocka_unit_test(test_reopen_multiple_commit),
        cmocka_unit_test(test_reopen_multiple_abort),
        cmocka_unit_test(test_reopen_transition_union),
        cmocka_unit_test(test_reopen_format_read_only),
        cmocka_unit_test(test_replace_while_drained),
        cmocka_unit_test(test_failed_attach_while_drained),
        cmocka_unit_test(test_drain),
        cmocka_unit_test(test_drain_waits_for_requests),
        cmocka_unit_test(test_drain_from_coroutine),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_auto_names),
    };
    driver_register(&bdrv_test_fmt);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
