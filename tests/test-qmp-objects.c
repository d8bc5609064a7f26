/*
 * Objects of the daemon through the generated command table: an iothread
 * object runs a loop of its own in its own thread, and
 * x-blockdev-set-iothread checks, then refuses to move a node into an
 * iothread (nodes run in the main loop only) while a move to the main loop
 * succeeds.  The differential iotests (qmp-object-*) check the wire
 * replies against QEMU; this checks what a wire reply cannot show.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "strata/backend.h"
#include "strata/block.h"
#include "strata/iothread.h"
#include "strata/loop.h"
#include "strata/qmp.h"

/* Run a command as the server does; returns its error message or NULL. */
static char *run(const char *name, const char *args_json)
{
    const QmpCommand *cmd = qmp_command_find(name);
    json_t *args = json_loads(args_json, 0, NULL);
    json_t *ret = NULL;
    GError *err = NULL;
    char *msg = NULL;

    assert_non_null(cmd);
    assert_non_null(args);
    if (!cmd->fn(args, &ret, &err)) {
        msg = g_strdup(err->message);
        g_error_free(err);
    }
    json_decref(ret);
    json_decref(args);
    return msg;
}

typedef struct {
    GThread *thread;
    StrataLoop *loop;
    int ran;
} Where;

static void where_bh(void *opaque)
{
    Where *w = opaque;
    w->thread = g_thread_self();
    w->loop = loop_get();
    w->ran++;
}

static void test_iothread_own_loop(void **state)
{
    IOThreadParams p;
    GError *err = NULL;
    iothread_params_default(&p);
    IOThread *t = iothread_new("t0", &p, &err);
    assert_non_null(t);
    assert_true(iothread_thread_id(t) > 0);

    Where w = { 0 };
    iothread_run_sync(t, where_bh, &w);
    assert_int_equal(w.ran, 1);
    assert_ptr_not_equal(w.thread, g_thread_self());
    assert_ptr_equal(w.loop, iothread_loop(t));
    assert_ptr_not_equal(w.loop, loop_get());
    /* a second call runs in the same thread and loop */
    GThread *first = w.thread;
    iothread_run_sync(t, where_bh, &w);
    assert_int_equal(w.ran, 2);
    assert_ptr_equal(w.thread, first);
    iothread_free(t);

    p.thread_pool_max = 0;
    assert_null(iothread_new("t1", &p, &err));
    assert_string_equal(err->message,
                        "bad thread-pool-min/thread-pool-max values");
    g_clear_error(&err);
}

static void test_set_iothread(void **state)
{
    GError *err = NULL;
    char *msg;

    assert_null(run("object-add", "{\"qom-type\": \"iothread\", "
                    "\"id\": \"io0\"}"));
    BlockNode *bs = node_open(NULL, json_pack("{s:s, s:s}", "driver",
                                              "null-co", "node-name", "n0"),
                              NODE_O_RDWR, &err);
    assert_non_null(bs);

    StrataLoop *main_loop = loop_main();
    assert_null(run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
                    "\"iothread\": \"io0\"}"));
    assert_ptr_not_equal(node_loop(bs), main_loop);
    /* requests from the main thread go to the node's thread */
    uint8_t buf[512];
    BlockBackend *rd = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
    assert_true(blk_insert_node(rd, bs, &err));
    assert_int_equal(blk_pread(rd, 0, sizeof(buf), buf, 0), 0);
    blk_unref(rd);
    assert_null(run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
                    "\"iothread\": null}"));
    assert_ptr_equal(node_loop(bs), main_loop);
    msg = run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
              "\"iothread\": \"nosuch\"}");
    assert_string_equal(msg, "Cannot find iothread nosuch");
    g_free(msg);
    /* found by QOM path as QEMU finds it */
    static const char *const found[] = {
        "objects/io0", "/objects/io0", "//objects//io0/", "",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(found); i++) {
        char *args = g_strdup_printf("{\"node-name\": \"n0\", "
                                     "\"iothread\": \"%s\"}", found[i]);
        assert_null(run("x-blockdev-set-iothread", args));
        assert_ptr_not_equal(node_loop(bs), main_loop);
        g_free(args);
    }
    /* an iothread with a node in it stays (QEMU 7.2 fails an assertion) */
    msg = run("object-del", "{\"id\": \"io0\"}");
    assert_string_equal(msg, "Cannot delete iothread 'io0': node 'n0' runs "
                        "in it (move it with x-blockdev-set-iothread "
                        "first)");
    g_free(msg);
    static const char *const not_found[] = {
        "/io0", "x/io0", "objects", "/",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(not_found); i++) {
        char *args = g_strdup_printf("{\"node-name\": \"n0\", "
                                     "\"iothread\": \"%s\"}",
                                     not_found[i]);
        msg = run("x-blockdev-set-iothread", args);
        assert_true(g_str_has_prefix(msg, "Cannot find iothread"));
        g_free(msg);
        g_free(args);
    }
    /* "" is a partial path of every object: two iothreads make it ambiguous */
    assert_null(run("object-add", "{\"qom-type\": \"iothread\", "
                    "\"id\": \"io1\"}"));
    msg = run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
              "\"iothread\": \"\"}");
    assert_string_equal(msg, "Cannot find iothread ");
    g_free(msg);
    assert_null(run("object-del", "{\"id\": \"io1\"}"));

    /* under a block backend only with force */
    BlockBackend *blk = blk_new(0, BLK_PERM_ALL);
    assert_true(blk_insert_node(blk, bs, &err));
    msg = run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
              "\"iothread\": null}");
    assert_string_equal(msg, "Node n0 is associated with a BlockBackend and "
                        "could be in use (use force=true to override this "
                        "check)");
    g_free(msg);
    assert_null(run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
                    "\"iothread\": null, \"force\": true}"));
    /* one that must not move (fixed-iothread) refuses even with force */
    blk_set_loop_policy(blk, true, NULL, NULL);
    msg = run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
              "\"iothread\": \"io0\", \"force\": true}");
    assert_string_equal(msg, "Cannot change iothread of active block "
                        "backend");
    g_free(msg);
    assert_ptr_equal(node_loop(bs), main_loop);
    blk_unref(blk);
    node_unref(bs);

    msg = run("x-blockdev-set-iothread", "{\"node-name\": \"n0\", "
              "\"iothread\": null}");
    assert_string_equal(msg, "Failed to find node with node-name='n0'");
    g_free(msg);
    assert_null(run("object-del", "{\"id\": \"io0\"}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iothread_own_loop),
        cmocka_unit_test(test_set_iothread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
