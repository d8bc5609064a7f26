/*
 * NBD wait points against stray wake-ups (see test-coroutine-wake.c): a
 * coroutine entered by someone other than the event it waits for must go
 * on waiting, not return while its waiter record is still in use:
 *
 *   nbd_wait            client (block/drivers/nbd-conn.c): its timer and
 *                       its waker (socket, connect, close) hold &w
 *   nbd_co_cmd          client request (block/drivers/nbd.c): libnbd's
 *                       completion callback holds the command on its stack
 *   channel_wait        server socket (nbd/channel.c): the channel names
 *                       the coroutine as its reader or writer
 *
 * Each test wakes the waiting coroutine once more than the wait expects,
 * lets that wake run, checks that the wait has not ended, then that it
 * ends when its own event comes.  Without the fix each returned at the
 * stray wake (channel_wait then tripped its own assertion on waiting
 * again while still registered).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include "strata/backend.h"
#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/iov.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"
#include "../block/drivers/nbd-int.h"
#include "../nbd/channel.h"
#include "support.h"

/* Run what is ready now, a few rounds (BHs queued by BHs included). */
/* ---- nbd_wait ---- */

typedef struct {
    NbdWait w;
    int64_t timeout_ns;
    int64_t waited_ns;
    bool returned;
} NbdWaitRun;

static void nbd_waiter(void *opaque)
{
    NbdWaitRun *r = opaque;
    int64_t start = clock_ns();
    nbd_wait(&r->w, r->timeout_ns);
    r->waited_ns = clock_ns() - start;
    r->returned = true;
}

static void test_nbd_wait_timeout_stray(void **state)
{
    NbdWaitRun r = { .timeout_ns = 50 * 1000000LL };
    Coroutine *co = co_create(nbd_waiter, &r);
    co_enter(co);
    co_wake(co);
    run_ready();
    assert_false(r.returned);
    assert_true(wait_flag(&r.returned, 2000));
    assert_true(r.w.timed_out);
    assert_true(r.waited_ns >= 50 * 1000000LL);
}

static void test_nbd_wait_wake_stray(void **state)
{
    NbdWaitRun r = { .timeout_ns = -1 };
    Coroutine *co = co_create(nbd_waiter, &r);
    co_enter(co);
    co_wake(co);
    run_ready();
    assert_false(r.returned);
    nbd_wait_wake(&r.w);
    assert_true(wait_flag(&r.returned, 2000));
    assert_false(r.w.timed_out);
}

/* ---- a client request waiting for its reply ---- */

static char *sock_path;

typedef struct {
    BlockBackend *blk;
    uint8_t buf[4096];
    int ret;
    int64_t took_ns;
    bool done;
} NbdReader;

static void nbd_reader_co(void *opaque)
{
    NbdReader *r = opaque;
    IOVec v;
    int64_t start = clock_ns();
    iovec_init_buf(&v, r->buf, sizeof(r->buf));
    r->ret = blk_co_preadv(r->blk, 0, sizeof(r->buf), &v, 0);
    r->took_ns = clock_ns() - start;
    iovec_destroy(&v);
    r->done = true;
}

static void test_nbd_cmd_stray(void **state)
{
    GError *err = NULL;
    /*
     * Each read takes 100 ms in the server: the stray wake comes first.
     * (Not read-zeroes: the server would answer from block status, at
     * once, with a hole.)
     */
    BlockNode *bs = open_json(json_pack(
        "{s:s, s:s, s:I, s:I}", "driver", "null-co", "node-name",
        "slow", "size", (json_int_t)(1 << 20), "latency-ns",
        (json_int_t)(100 * 1000000LL)));
    NbdServerAddr a = { .type = NBD_ADDR_UNIX, .path = sock_path };
    assert_true(nbd_server_start(&a, 0, NULL));
    NbdExportOptions eo = { .id = "exp", .node_name = "slow", .name = "exp" };
    assert_true(nbd_export_add(&eo, NULL));
    BlockBackend *blk = blk_new_open(NULL, json_pack(
        "{s:s, s:s, s:{s:s, s:s}}", "driver", "nbd", "export", "exp",
        "server", "type", "unix", "path", sock_path), 0, &err);
    if (!blk) {
        fail_msg("open failed: %s", err->message);
    }

    NbdReader r = { .blk = blk };
    Coroutine *co = co_create(nbd_reader_co, &r);
    co_enter(co);
    assert_false(r.done);
    co_wake(co);
    run_ready();
    assert_false(r.done);
    assert_true(wait_flag(&r.done, 5000));
    assert_int_equal(r.ret, 0);
    assert_true(r.took_ns >= 100 * 1000000LL);

    blk_unref(blk);
    assert_true(nbd_server_stop(NULL));
    node_unref(bs);
}

/* ---- the server's socket: a reader and a writer ---- */

typedef struct {
    NbdChannel *ch;
    uint8_t *buf;
    size_t len;
    int ret;
    bool done;
} ChanIo;

static void chan_reader(void *opaque)
{
    ChanIo *io = opaque;
    io->ret = nbd_channel_read(io->ch, io->buf, io->len);
    io->done = true;
}

static void chan_writer(void *opaque)
{
    ChanIo *io = opaque;
    io->ret = nbd_channel_write(io->ch, io->buf, io->len);
    io->done = true;
}

static void test_channel_read_stray(void **state)
{
    int sv[2];
    uint8_t buf[16];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ChanIo io = { .ch = nbd_channel_new(sv[0]), .buf = buf,
                  .len = sizeof(buf) };
    Coroutine *co = co_create(chan_reader, &io);
    co_enter(co);               /* nothing to read: waits */
    assert_false(io.done);
    co_wake(co);
    run_ready();
    assert_false(io.done);
    assert_int_equal(write(sv[1], "0123456789abcdef", 16), 16);
    assert_true(wait_flag(&io.done, 2000));
    assert_int_equal(io.ret, 1);
    assert_memory_equal(buf, "0123456789abcdef", 16);
    nbd_channel_free(io.ch);    /* (asserts nobody waits on it) */
    close(sv[1]);
}

static void test_channel_write_stray(void **state)
{
    int sv[2];
    int small = 4096;
    size_t len = 4 << 20;       /* far more than both socket buffers */
    uint8_t *buf = g_malloc(len);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    fill_nonzero(buf, len, 7);
    ChanIo io = { .ch = nbd_channel_new(sv[0]), .buf = buf, .len = len };
    Coroutine *co = co_create(chan_writer, &io);
    co_enter(co);               /* the socket fills up: waits */
    assert_false(io.done);
    co_wake(co);
    run_ready();
    assert_false(io.done);

    /* Take everything from the other end. */
    uint8_t *got = g_malloc(len);
    size_t have = 0;
    int64_t end = clock_ns() + 5000 * 1000000LL;
    while (have < len && clock_ns() < end) {
        ssize_t n = recv(sv[1], got + have, len - have, MSG_DONTWAIT);
        if (n > 0) {
            have += n;
        }
        loop_iterate(false);
    }
    assert_int_equal(have, len);
    assert_true(wait_flag(&io.done, 2000));
    assert_int_equal(io.ret, 0);
    assert_memory_equal(got, buf, len);
    nbd_channel_free(io.ch);
    close(sv[1]);
    g_free(got);
    g_free(buf);
}

static int setup(void **state)
{
    if (test_tmpdir_setup(state) != 0) {
        return -1;
    }
    sock_path = test_path("nbd.sock");
    return 0;
}

static int teardown(void **state)
{
    g_free(sock_path);
    return test_tmpdir_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nbd_wait_timeout_stray),
        cmocka_unit_test(test_nbd_wait_wake_stray),
        cmocka_unit_test(test_nbd_cmd_stray),
        cmocka_unit_test(test_channel_read_stray),
        cmocka_unit_test(test_channel_write_stray),
    };
    /* One case alone (several abort the program before the fix). */
    if (g_getenv("TEST_FILTER")) {
        cmocka_set_test_filter(g_getenv("TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, setup, teardown);
}
