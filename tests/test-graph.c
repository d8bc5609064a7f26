/*
 * The node graph: permission conflicts and complete rollback, freeze
 * counters, multi-node reopen (commit and abort), file/backing replaced
 * by reopen, drain.
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

/* The same with backing files, for reopen's backing=NODE / backing=null. */
static const BlockDriver bdrv_test_cow = {
    .format_name = "test-cow",
    .is_format = true,
    .supports_backing = true,
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
    assert_non_null(strstr(err->message, "unshared by an unnamed block device"));
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

/*
 * keep_old_opts: true keeps what the new options leave out (qemu-io's
 * reopen), false resets it to its default or refuses what the driver
 * cannot change (blockdev-reopen).
 */
static void test_reopen_keep_old_opts(void **state)
{
    GError *err = NULL;
    BlockNode *a = node_open(NULL, json_pack("{s:s, s:s, s:{s:s, s:s}}",
                                             "driver", "raw", "node-name", "ka",
                                             "file", "driver", "null-co",
                                             "size", "1M"),
                             NODE_O_RDWR, &err);
    assert_non_null(a);
    BlockNode *file = child_node(node_find_child(a, "file"));

    assert_true(node_reopen(a, json_pack("{s:b}", "cache.no-flush", 1), false,
                            &err));
    assert_true(node_get_flags(a) & NODE_O_NO_FLUSH);
    assert_true(node_get_flags(file) & NODE_O_NO_FLUSH);
    assert_true(node_reopen(a, NULL, false, &err));
    assert_true(node_get_flags(a) & NODE_O_NO_FLUSH);

    /* The null child's size was given: left out, it cannot be reset. */
    ReopenQueue *q = reopen_queue_add_opts(
        NULL, a, json_pack("{s:s}", "driver", "raw"), false, false);
    assert_false(reopen_multiple(q, &err));
    assert_string_equal(err->message,
                        "Option 'size' cannot be reset to its default value");
    g_clear_error(&err);
    assert_true(node_get_flags(a) & NODE_O_NO_FLUSH);

    /* Given inline, the child is reopened with it: the cache mode resets. */
    q = reopen_queue_add_opts(
        NULL, a, json_pack("{s:s, s:s, s:s}", "driver", "raw",
                           "file.driver", "null-co", "file.size", "1M"),
        false, false);
    if (!reopen_multiple(q, &err)) {
        fail_msg("reopen: %s", err->message);
    }
    assert_false(node_get_flags(a) & NODE_O_NO_FLUSH);
    assert_false(node_get_flags(file) & NODE_O_NO_FLUSH);
    node_unref(a);
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
    bool ended;         /* node_drain_end returned */
} CoDrain;

static void co_drain_entry(void *opaque)
{
    CoDrain *d = opaque;
    node_drain_begin(d->bs);
    d->done = true;
    node_drain_end(d->bs);
    d->ended = true;
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
    CoDrain d = { blk_node(blk), false, false };
    co_enter(co_create(co_drain_entry, &d));
    /* The coroutine waits for the request before it goes on. */
    LOOP_WAIT_WHILE(!d.done);
    assert_int_equal(io.done, 1);
    /* The end, too, runs from a BH (block/drain.c). */
    LOOP_WAIT_WHILE(!d.ended);
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

/* ---- reopen with file=NODE / backing=NODE / backing=null ---- */

/* test-cow node `name` over null-co, with `backing` (a node name) or none. */
static BlockNode *open_cow(const char *name, const char *backing, bool rw)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:{s:s}}", "driver", "test-cow",
                          "node-name", name, "file", "driver", "null-co");
    if (backing) {
        json_object_set_new(o, "backing", json_string(backing));
    }
    BlockNode *bs = node_open(NULL, o, rw ? NODE_O_RDWR : 0, &err);
    if (!bs) {
        fail_msg("open failed: %s", err->message);
    }
    return bs;
}

static bool has_parent(BlockNode *bs, BlockChild *c)
{
    for (BlockChild *p = node_next_parent(bs, NULL); p;
         p = node_next_parent(bs, p)) {
        if (p == c) {
            return true;
        }
    }
    return false;
}

static bool reopen_with(BlockNode *bs, const char *key, json_t *value,
                        GError **errp)
{
    json_t *o = json_object();
    json_object_set_new(o, key, value);
    return node_reopen(bs, o, node_is_read_only(bs), errp);
}

static void expect_reopen_error(BlockNode *bs, const char *key, json_t *value,
                                const char *msg)
{
    GError *err = NULL;
    assert_false(reopen_with(bs, key, value, &err));
    assert_non_null(err);
    assert_string_equal(err->message, msg);
    g_clear_error(&err);
}

static void test_reopen_backing_replace(void **state)
{
    GError *err = NULL;
    BlockNode *b1 = open_raw_null("b1", false);
    BlockNode *b2 = open_raw_null("b2", false);
    BlockNode *top = open_cow("ctop", "b1", true);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, top, &err));
    BlockChild *backing = node_find_child(top, "backing");
    assert_ptr_equal(child_node(backing), b1);
    uint64_t perm, shared;
    node_get_cumulative_perm(b1, &perm, &shared);
    assert_int_equal(perm, BLK_PERM_CONSISTENT_READ);

    /* Naming the node it has changes nothing. */
    assert_true(reopen_with(top, "backing", json_string("b1"), &err));
    assert_ptr_equal(node_find_child(top, "backing"), backing);

    /* Another node: the same edge moves, with the permissions of a backing. */
    assert_true(reopen_with(top, "backing", json_string("b2"), &err));
    assert_ptr_equal(node_find_child(top, "backing"), backing);
    assert_ptr_equal(child_node(backing), b2);
    assert_false(has_parent(b1, backing));
    node_get_cumulative_perm(b1, &perm, &shared);
    assert_int_equal(perm, 0);
    node_get_cumulative_perm(b2, &perm, &shared);
    assert_int_equal(perm, BLK_PERM_CONSISTENT_READ);
    /* The reference is not kept as an option of top. */
    assert_true(node_reopen(top, NULL, false, &err));

    /* null detaches; a name attaches a new backing edge. */
    assert_true(reopen_with(top, "backing", json_null(), &err));
    assert_null(node_find_child(top, "backing"));
    node_get_cumulative_perm(b2, &perm, &shared);
    assert_int_equal(perm, 0);
    assert_true(reopen_with(top, "backing", json_null(), &err));
    assert_true(reopen_with(top, "backing", json_string("b1"), &err));
    backing = node_find_child(top, "backing");
    assert_non_null(backing);
    assert_ptr_equal(child_node(backing), b1);
    assert_true(backing->role & CHILD_ROLE_COW);
    assert_false(backing->inherits);
    node_get_cumulative_perm(b1, &perm, &shared);
    assert_int_equal(perm, BLK_PERM_CONSISTENT_READ);

    blk_unref(blk);
    node_unref(top);
    node_unref(b1);
    node_unref(b2);
}

/* A job on `bs` that does not let anyone else read it consistently. */
static BlockChild *attach_exclusive_job(BlockNode *bs, const char *name)
{
    GError *err = NULL;
    BlockChild *c = child_attach(bs, "target", &job_class, CHILD_ROLE_DATA,
                                 BLK_PERM_CONSISTENT_READ,
                                 BLK_PERM_ALL & ~BLK_PERM_CONSISTENT_READ,
                                 (void *)name, &err);
    assert_non_null(c);
    return c;
}

static void test_reopen_backing_replace_abort(void **state)
{
    GError *err = NULL;
    BlockNode *b1 = open_raw_null("ab1", false);
    BlockNode *b2 = open_raw_null("ab2", false);
    BlockNode *top = open_cow("abtop", "ab1", true);
    BlockNode *other = open_raw_null("abother", true);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, top, &err));
    BlockChild *backing = node_find_child(top, "backing");
    uint64_t perm, shared;

    /* A later node of the queue fails: the new backing edge goes back. */
    ReopenQueue *q = reopen_queue_add(NULL, top,
                                      json_pack("{s:s}", "backing", "ab2"),
                                      false);
    q = reopen_queue_add(q, other, json_pack("{s:s}", "node-name", "x"),
                         false);
    assert_false(reopen_multiple(q, &err));
    assert_string_equal(err->message, "Cannot change the option 'node-name'");
    g_clear_error(&err);
    assert_ptr_equal(node_find_child(top, "backing"), backing);
    assert_ptr_equal(child_node(backing), b1);
    assert_true(has_parent(b1, backing));
    assert_null(node_next_parent(b2, NULL));
    node_get_cumulative_perm(b1, &perm, &shared);
    assert_int_equal(perm, BLK_PERM_CONSISTENT_READ);

    /* A permission conflict on the new node is refused and rolled back. */
    BlockChild *job = attach_exclusive_job(b2, "j2");
    expect_reopen_error(top, "backing", json_string("ab2"),
        "Permission conflict on node 'ab2': permissions 'consistent read' are "
        "both required by node 'abtop' (uses node 'ab2' as 'backing' child) "
        "and unshared by commit job 'j2' (uses node 'ab2' as 'target' "
        "child).");
    assert_ptr_equal(child_node(backing), b1);
    node_get_cumulative_perm(b1, &perm, &shared);
    assert_int_equal(perm, BLK_PERM_CONSISTENT_READ);
    node_get_cumulative_perm(b2, &perm, &shared);
    assert_int_equal(perm, BLK_PERM_CONSISTENT_READ); /* the job's own */

    /* Detaching, then a failing attach: the node stays without backing. */
    assert_true(reopen_with(top, "backing", json_null(), &err));
    expect_reopen_error(top, "backing", json_string("ab2"),
        "Permission conflict on node 'ab2': permissions 'consistent read' are "
        "both required by node 'abtop' (uses node 'ab2' as 'backing' child) "
        "and unshared by commit job 'j2' (uses node 'ab2' as 'target' "
        "child).");
    assert_null(node_find_child(top, "backing"));
    assert_true(child_detach(job, &err));

    /* A detach undone by a failure later in the same node's prepare. */
    assert_true(reopen_with(top, "backing", json_string("ab1"), &err));
    backing = node_find_child(top, "backing");
    json_t *o = json_pack("{s:n, s:s}", "backing", "bogus", "1");
    assert_false(node_reopen(top, o, false, &err));
    assert_string_equal(err->message, "Cannot change the option 'bogus'");
    g_clear_error(&err);
    assert_ptr_equal(node_find_child(top, "backing"), backing);
    assert_ptr_equal(child_node(backing), b1);

    blk_unref(blk);
    node_unref(top);
    node_unref(other);
    node_unref(b1);
    node_unref(b2);
}

static void test_reopen_child_errors(void **state)
{
    GError *err = NULL;
    BlockNode *top = open_cow("etop", NULL, true);
    BlockNode *raw = open_raw_null("eraw", true);
    const char *file_name = node_get_name(child_node(node_find_child(top, "file")));

    expect_reopen_error(top, "backing", json_string("nosuch"),
                        "Cannot find device='' nor node-name='nosuch'");
    expect_reopen_error(top, "backing", json_string(""),
                        "Cannot find device='' nor node-name=''");
    expect_reopen_error(top, "file", json_string("nosuch"),
                        "Cannot find device='' nor node-name='nosuch'");
    expect_reopen_error(top, "backing", json_string("etop"),
                        "Making 'etop' a backing child of 'etop' would create "
                        "a cycle");
    expect_reopen_error(top, "file", json_string("etop"),
                        "Making 'etop' a file child of 'etop' would create "
                        "a cycle");
    expect_reopen_error(raw, "backing", json_string("etop"),
                        "Driver 'raw' of node 'eraw' does not support backing "
                        "files");
    expect_reopen_error(top, "backing", json_integer(3),
                        "Invalid parameter type for 'backing', expected: "
                        "BlockdevRefOrNull");
    expect_reopen_error(top, "file", json_null(),
                        "Invalid parameter type for 'file', expected: "
                        "BlockdevRef");
    /* The backing option is looked at first. */
    json_t *o = json_pack("{s:s, s:s}", "file", "nof", "backing", "nob");
    assert_false(node_reopen(top, o, false, &err));
    assert_string_equal(err->message,
                        "Cannot find device='' nor node-name='nob'");
    g_clear_error(&err);
    /* A node named with inline options too: the options are refused. */
    o = json_pack("{s:s, s:s}", "file", file_name, "file.size", "1M");
    assert_false(node_reopen(top, o, false, &err));
    assert_string_equal(err->message, "Cannot change the option 'file.size'");
    g_clear_error(&err);

    /* Through the child's options: a protocol node has no file to replace. */
    o = json_pack("{s:{s:s}}", "file", "file", "eraw");
    assert_false(node_reopen(top, o, false, &err));
    assert_string_equal(err->message,
                        "Cannot set file child to format node without file "
                        "child");
    g_clear_error(&err);
    o = json_pack("{s:{s:s}}", "file", "backing", "eraw");
    assert_false(node_reopen(top, o, false, &err));
    char *expect = g_strdup_printf("Driver 'null-co' of node '%s' does not "
                                   "support backing files", file_name);
    assert_string_equal(err->message, expect);
    g_free(expect);
    g_clear_error(&err);

    /* A filter has one child: blkdebug takes no backing. */
    json_t *d = json_pack("{s:s, s:s, s:{s:s}}", "driver", "blkdebug",
                          "node-name", "edbg", "image", "driver", "null-co");
    BlockNode *dbg = node_open(NULL, d, NODE_O_RDWR, &err);
    assert_non_null(dbg);
    expect_reopen_error(dbg, "backing", json_string("eraw"),
                        "'edbg' is a blkdebug filter node that does not "
                        "support a backing child");
    node_unref(dbg);
    node_unref(raw);
    node_unref(top);
}

static void test_reopen_child_frozen(void **state)
{
    GError *err = NULL;
    BlockNode *b1 = open_raw_null("fb1", false);
    BlockNode *b2 = open_raw_null("fb2", false);
    BlockNode *top = open_cow("fztop", "fb1", true);
    BlockChild *backing = node_find_child(top, "backing");
    child_freeze(backing, "stream job 's0'");
    expect_reopen_error(top, "backing", json_string("fb2"),
                        "Cannot change frozen 'backing' link from 'fztop' to "
                        "'fb1'");
    expect_reopen_error(top, "backing", json_null(),
                        "Cannot change frozen 'backing' link from 'fztop' to "
                        "'fb1'");
    /* The node it has already is no change, frozen or not. */
    assert_true(reopen_with(top, "backing", json_string("fb1"), &err));
    assert_ptr_equal(child_node(backing), b1);
    child_unfreeze(backing, "stream job 's0'");
    assert_true(reopen_with(top, "backing", json_string("fb2"), &err));
    assert_ptr_equal(child_node(backing), b2);
    node_unref(top);
    node_unref(b1);
    node_unref(b2);
}

static void test_reopen_file_replace(void **state)
{
    GError *err = NULL;
    BlockNode *top = open_raw_null("frtop", true);
    BlockChild *file = node_find_child(top, "file");
    char *old_name = g_strdup(node_get_name(child_node(file)));
    json_t *o = json_pack("{s:s, s:s, s:s}", "driver", "null-co",
                          "node-name", "fr2", "size", "2M");
    BlockNode *n2 = node_open(NULL, o, NODE_O_RDWR, &err);
    assert_non_null(n2);
    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, top, &err));
    assert_int_equal(blk_getlength(blk), 1 << 30); /* null-co default */

    /* A writer elsewhere on the new node that does not share: refused. */
    BlockChild *job = child_attach(n2, "target", &job_class, CHILD_ROLE_DATA,
                                   BLK_PERM_CONSISTENT_READ,
                                   BLK_PERM_CONSISTENT_READ, "j3", &err);
    assert_non_null(job);
    assert_false(reopen_with(top, "file", json_string("fr2"), &err));
    assert_non_null(strstr(err->message, "Permission conflict on node 'fr2'"));
    g_clear_error(&err);
    assert_ptr_equal(node_find_child(top, "file"), file);
    assert_string_equal(node_get_name(child_node(file)), old_name);
    assert_non_null(node_find(old_name));
    assert_true(child_detach(job, &err));

    /* Retargeted: the length is the new node's, the old node is closed. */
    assert_true(reopen_with(top, "file", json_string("fr2"), &err));
    assert_ptr_equal(node_find_child(top, "file"), file);
    assert_ptr_equal(child_node(file), n2);
    assert_false(file->inherits);
    assert_null(node_find(old_name));
    assert_int_equal(blk_getlength(blk), 2 << 20);
    uint64_t perm, shared;
    node_get_cumulative_perm(n2, &perm, &shared);
    assert_true(perm & BLK_PERM_WRITE);
    char buf[512];
    assert_int_equal(blk_pwrite(blk, 0, sizeof(buf), buf, 0), 0);

    blk_unref(blk);
    node_unref(top);
    assert_non_null(node_find("fr2"));
    node_unref(n2);
    g_free(old_name);
}

/*
 * raw over blkdebug over null-co: file= the grandchild skips blkdebug (the
 * grandchild was opened by raw's subtree, so it follows raw's reopens), and
 * blkdebug's image edge (its bs->file) can itself be retargeted.
 */
static void test_reopen_file_skip_filter(void **state)
{
    GError *err = NULL;
    json_t *o = json_pack("{s:s, s:s, s:{s:s, s:s, s:{s:s, s:s}}}",
                          "driver", "raw", "node-name", "sr",
                          "file", "driver", "blkdebug", "node-name", "sd",
                          "image", "driver", "null-co", "node-name", "sn");
    BlockNode *r = node_open(NULL, o, NODE_O_RDWR, &err);
    assert_non_null(r);
    BlockNode *spare = open_raw_null("sspare", true);
    BlockNode *sn = node_find("sn");
    BlockNode *sd = node_find("sd");

    /* blkdebug's image moves to another node and back. */
    assert_true(reopen_with(sd, "file", json_string("sspare"), &err));
    assert_ptr_equal(child_node(node_find_child(sd, "image")), spare);
    assert_null(node_find("sn"));
    o = json_pack("{s:s, s:s, s:s}", "driver", "null-co", "node-name", "sn",
                  "read-zeroes", "on");
    sn = node_open(NULL, o, NODE_O_RDWR, &err);
    assert_non_null(sn);
    assert_true(reopen_with(sd, "file", json_string("sn"), &err));
    assert_ptr_equal(child_node(node_find_child(sd, "image")), sn);
    node_unref(sn);

    BlockBackend *blk = blk_new(BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE,
                                BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, r, &err));
    char buf[512];
    assert_int_equal(blk_pread(blk, 0, sizeof(buf), buf, 0), 0);
    /* The blkdebug node is skipped and closed; requests still work. */
    assert_true(reopen_with(r, "file", json_string("sn"), &err));
    assert_null(node_find("sd"));
    assert_ptr_equal(child_node(node_find_child(r, "file")), sn);
    assert_int_equal(blk_pread(blk, 0, sizeof(buf), buf, 0), 0);
    assert_int_equal(blk_pwrite(blk, 0, sizeof(buf), buf, 0), 0);
    expect_reopen_error(r, "file", json_string("sd"),
                        "Cannot find device='' nor node-name='sd'");

    blk_unref(blk);
    node_unref(r);
    node_unref(spare);
}

/* Several nodes: a parent and, through its options, its backing file. */
static void test_reopen_backing_multi(void **state)
{
    GError *err = NULL;
    BlockNode *b1 = open_raw_null("mb1", false);
    BlockNode *b2 = open_raw_null("mb2", false);
    /* mid is opened with top, so it follows top's reopens. */
    json_t *opts = json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:s, s:{s:s}, s:s}}",
                             "driver", "test-cow", "node-name", "mtop",
                             "file", "driver", "null-co",
                             "backing", "driver", "test-cow",
                             "node-name", "mmid", "file", "driver", "null-co",
                             "backing", "mb1");
    BlockNode *top = node_open(NULL, opts, NODE_O_RDWR, &err);
    assert_non_null(top);
    BlockNode *mid = node_find("mmid");
    assert_true(node_find_child(top, "backing")->inherits);

    json_t *o = json_pack("{s:{s:s}}", "backing", "backing", "mb2");
    assert_true(node_reopen(top, o, false, &err));
    assert_ptr_equal(child_node(node_find_child(mid, "backing")), b2);
    assert_null(node_next_parent(b1, NULL));

    /* backing=top's backing is a cycle one level down. */
    o = json_pack("{s:{s:s}}", "backing", "backing", "mtop");
    assert_false(node_reopen(top, o, false, &err));
    assert_string_equal(err->message,
                        "Making 'mtop' a backing child of 'mmid' would create "
                        "a cycle");
    g_clear_error(&err);

    /* Replacing top's backing and a failure below it: all restored. */
    o = json_pack("{s:s, s:{s:s}}", "backing", "mb1", "file", "bogus", "1");
    assert_false(node_reopen(top, o, false, &err));
    g_clear_error(&err);
    assert_ptr_equal(child_node(node_find_child(top, "backing")), mid);
    assert_non_null(node_find("mmid"));

    node_unref(top);
    assert_null(node_find("mmid"));
    node_unref(b1);
    node_unref(b2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conflict_message_and_rollback),
        cmocka_unit_test(test_read_only_refuses_writer),
        cmocka_unit_test(test_freeze),
        cmocka_unit_test(test_chain_freeze),
        cmocka_unit_test(test_reopen_multiple_commit),
        cmocka_unit_test(test_reopen_keep_old_opts),
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
        cmocka_unit_test(test_reopen_backing_replace),
        cmocka_unit_test(test_reopen_backing_replace_abort),
        cmocka_unit_test(test_reopen_child_errors),
        cmocka_unit_test(test_reopen_child_frozen),
        cmocka_unit_test(test_reopen_file_replace),
        cmocka_unit_test(test_reopen_file_skip_filter),
        cmocka_unit_test(test_reopen_backing_multi),
    };
    driver_register(&bdrv_test_fmt);
    driver_register(&bdrv_test_cow);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
