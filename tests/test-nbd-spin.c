/*
 * The NBD server's busy wait before the loop sleeps (nbd/spin.c): while
 * it spins, the loop still sees everything it watches at once (an fd of
 * anyone, not only the NBD socket), and a timer due before the end of the
 * spin still fires when due.  The spin deadlines here are ten seconds,
 * the events come after milliseconds: a loop that held them back until
 * the deadline would fail by a factor of hundreds, not by noise.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <unistd.h>
#include <sys/socket.h>
#include <cmocka.h>
#include <glib.h>
#include "strata/coroutine.h"
#include "strata/iothread.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"
#include "../nbd/channel.h"
#include "../nbd/spin.h"

#define SPIN_LONG_NS (10 * 1000000000LL)

typedef struct {
    int fd;
    bool seen;
} Pipe;

static void on_readable(void *opaque)
{
    Pipe *p = opaque;
    char c;

    assert_int_equal(read(p->fd, &c, 1), 1);
    p->seen = true;
}

static gpointer write_later(gpointer opaque)
{
    g_usleep(20 * 1000);
    assert_int_equal(write(GPOINTER_TO_INT(opaque), "x", 1), 1);
    return NULL;
}

static void test_fd_during_spin(void **state)
{
    int fds[2];
    Pipe p = { 0 };

    (void)state;
    assert_int_equal(pipe(fds), 0);
    p.fd = fds[0];
    guint id = loop_add_fd(fds[0], on_readable, &p);
    int64_t start = clock_ns();
    nbd_spin_until(start + SPIN_LONG_NS);
    GThread *t = g_thread_new("writer", write_later,
                              GINT_TO_POINTER(fds[1]));
    LOOP_WAIT_WHILE(!p.seen);
    assert_true(clock_ns() - start < SPIN_LONG_NS / 10);
    g_thread_join(t);
    loop_remove_fd(id);
    close(fds[0]);
    close(fds[1]);
}

static gboolean on_timer(gpointer opaque)
{
    *(bool *)opaque = true;
    return G_SOURCE_REMOVE;
}

static void test_timer_during_spin(void **state)
{
    bool fired = false;

    (void)state;
    GSource *src = g_timeout_source_new(5);
    g_source_set_callback(src, on_timer, &fired, NULL);
    g_source_attach(src, loop_context(loop_get()));
    g_source_unref(src);
    int64_t start = clock_ns();
    nbd_spin_until(start + SPIN_LONG_NS);
    LOOP_WAIT_WHILE(!fired);
    assert_true(clock_ns() - start < SPIN_LONG_NS / 10);
}

/* After its deadline the loop sleeps as before: an event still wakes it. */
static void test_after_deadline(void **state)
{
    int fds[2];
    Pipe p = { 0 };

    (void)state;
    assert_int_equal(pipe(fds), 0);
    p.fd = fds[0];
    guint id = loop_add_fd(fds[0], on_readable, &p);
    nbd_spin_until(clock_ns() + 1000 * 1000);
    GThread *t = g_thread_new("writer", write_later,
                              GINT_TO_POINTER(fds[1]));
    LOOP_WAIT_WHILE(!p.seen);
    g_thread_join(t);
    loop_remove_fd(id);
    close(fds[0]);
    close(fds[1]);
}

/*
 * A channel spins only while no other channel of its thread has taken a
 * request for NBD_SPIN_SHARED_NS: one client alone, or clients taking
 * turns with gaps longer than that.
 */
static void test_spin_alone(void **state)
{
    (void)state;
    int64_t t = 1000 * NBD_SPIN_SHARED_NS;
    static const int a, b;         /* two channels, by address */

    nbd_spin_note_request(&a, t);
    assert_true(nbd_spin_alone(t, 0));
    nbd_spin_note_request(&a, t + 1);
    assert_true(nbd_spin_alone(t + 2, 0));
    nbd_spin_note_request(&b, t + 3);           /* another client */
    assert_false(nbd_spin_alone(t + 4, 0));
    nbd_spin_note_request(&a, t + 5);           /* and back */
    assert_false(nbd_spin_alone(t + 5 + NBD_SPIN_SHARED_NS - 1, 0));
    assert_true(nbd_spin_alone(t + 5 + NBD_SPIN_SHARED_NS, 0));
    nbd_spin_note_request(&a, t + 6 + NBD_SPIN_SHARED_NS);
    assert_true(nbd_spin_alone(t + 7 + NBD_SPIN_SHARED_NS, 0));
}

/*
 * A request of another channel in flight keeps the spin off however long
 * it takes (a guest write whose copy-before-write copy waits for a CPU
 * must not find the pull spinning once the quiet time has passed); the
 * quiet time counts from its end.  The channel's own requests in flight
 * (mine) do not count against it.
 */
static void test_inflight_alone(void **state)
{
    (void)state;
    int64_t t = 2000 * NBD_SPIN_SHARED_NS;
    static const int a, b;

    nbd_spin_note_request(&a, t - NBD_SPIN_SHARED_NS);  /* after others' */
    nbd_spin_note_request(&a, t);
    nbd_spin_request_begin(&a);
    assert_true(nbd_spin_alone(t + NBD_SPIN_SHARED_NS, 1));
    assert_false(nbd_spin_alone(t + NBD_SPIN_SHARED_NS, 0));
    nbd_spin_request_end(&a, t + 1);
    assert_true(nbd_spin_alone(t + 2, 0));      /* still alone: a's own */

    nbd_spin_note_request(&b, t + 3);
    nbd_spin_request_begin(&b);
    /* b's request takes a hundred quiet times: a never spins meanwhile */
    assert_false(nbd_spin_alone(t + 100 * NBD_SPIN_SHARED_NS, 0));
    assert_int_equal(nbd_spin_window(100000, t + 100 * NBD_SPIN_SHARED_NS,
                                     0), 0);
    int64_t end = t + 100 * NBD_SPIN_SHARED_NS + 5;
    nbd_spin_request_end(&b, end);
    nbd_spin_note_request(&a, end + 1);
    assert_false(nbd_spin_alone(end + NBD_SPIN_SHARED_NS - 1, 0));
    assert_true(nbd_spin_alone(end + NBD_SPIN_SHARED_NS + 1, 0));
    assert_int_equal(nbd_spin_window(100000, end + NBD_SPIN_SHARED_NS + 1,
                                     0), 100000);
}

/*
 * The counters the bench reads count the decisions: a window refused
 * because another channel is busy is "shared", one given is a "spin".
 */
static void test_stats_decisions(void **state)
{
    (void)state;
    int64_t t = 3000 * NBD_SPIN_SHARED_NS;
    static const int a, b;
    NbdSpinStats before = *nbd_spin_stats();

    nbd_spin_note_request(&a, t);
    nbd_spin_note_request(&b, t + 1);
    assert_int_equal(nbd_spin_window(50000, t + 2, 0), 0);
    assert_int_equal(nbd_spin_window(0, t + 3, 0), 0);      /* not asked */
    nbd_spin_note_request(&a, t + 2 * NBD_SPIN_SHARED_NS);
    assert_int_equal(nbd_spin_window(50000, t + 3 * NBD_SPIN_SHARED_NS, 0),
                     50000);
    NbdSpinStats *now = nbd_spin_stats();
    assert_int_equal(now->nfields, sizeof(NbdSpinStats) / 8);
    assert_int_equal(now->requests - before.requests, 3);
    assert_int_equal(now->asked - before.asked, 2);
    assert_int_equal(now->shared - before.shared, 1);
    assert_int_equal(now->capped - before.capped, 0);
}

/*
 * A window already open when another client's request arrives is closed
 * at the loop's next poll: the guest's request does not wait for the end
 * of the window to get the CPU back.
 */
static void test_window_cut(void **state)
{
    bool fired = false;
    static const int a, b;

    (void)state;
    uint64_t cut = nbd_spin_stats()->cut;
    uint64_t loops = nbd_spin_stats()->loops;
    int64_t now = clock_ns();
    nbd_spin_until(now + SPIN_LONG_NS);
    nbd_spin_note_request(&a, now);
    nbd_spin_note_request(&b, now);
    GSource *src = g_timeout_source_new(5);
    g_source_set_callback(src, on_timer, &fired, NULL);
    g_source_attach(src, loop_context(loop_get()));
    g_source_unref(src);
    LOOP_WAIT_WHILE(!fired);
    assert_int_equal(nbd_spin_stats()->cut - cut, 1);
    assert_int_equal(nbd_spin_stats()->loops - loops, 0);
}

/*
 * The cap (poll-max-ns): 0 means a channel never spins, whatever it would
 * like; a positive cap cuts the window.  In the main loop the cap is
 * nbd_server_set_main_poll_max_ns()'s (STRATA_MAIN_LOOP_POLL_MAX_NS).
 */
/* Long after any request of another channel (test_spin_alone's). */
#define FAR_AHEAD (1000000 * NBD_SPIN_SHARED_NS)
#define LATER (FAR_AHEAD + NBD_SPIN_SHARED_NS)

static void test_window_cap(void **state)
{
    static const int a;

    (void)state;
    nbd_spin_note_request(&a, FAR_AHEAD);
    assert_int_equal(nbd_spin_window(100000, LATER, 0), 100000);
    assert_int_equal(nbd_spin_window(0, LATER, 0), 0);
    nbd_server_set_main_poll_max_ns(0);
    assert_int_equal(nbd_spin_cap(), 0);
    assert_int_equal(nbd_spin_window(100000, LATER, 0), 0);
    assert_int_equal(nbd_spin_window(8000, LATER, 0), 0);
    nbd_server_set_main_poll_max_ns(5000);
    assert_int_equal(nbd_spin_window(100000, LATER, 0), 5000);
    assert_int_equal(nbd_spin_window(3000, LATER, 0), 3000);
    nbd_server_set_main_poll_max_ns(INT64_MAX);
}

/* The environment variable: a number of ns or an error, nothing else. */
static void test_main_env(void **state)
{
    GError *err = NULL;

    (void)state;
    g_setenv(NBD_SERVER_MAIN_POLL_ENV, "0", TRUE);
    assert_true(nbd_server_main_poll_from_env(&err));
    assert_int_equal(nbd_spin_cap(), 0);
    g_setenv(NBD_SERVER_MAIN_POLL_ENV, "7000", TRUE);
    assert_true(nbd_server_main_poll_from_env(&err));
    assert_int_equal(nbd_spin_cap(), 7000);
    static const char *const bad[] = { "", "-1", "12us", "1e3",
                                       "99999999999999999999" };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_setenv(NBD_SERVER_MAIN_POLL_ENV, bad[i], TRUE);
        assert_false(nbd_server_main_poll_from_env(&err));
        assert_non_null(strstr(err->message, NBD_SERVER_MAIN_POLL_ENV));
        g_clear_error(&err);
        assert_int_equal(nbd_spin_cap(), 7000);     /* left as it was */
    }
    g_unsetenv(NBD_SERVER_MAIN_POLL_ENV);
    assert_true(nbd_server_main_poll_from_env(&err));
    assert_int_equal(nbd_spin_cap(), 7000);         /* unset: unchanged */
    nbd_server_set_main_poll_max_ns(INT64_MAX);
}

typedef struct {
    int64_t cap, window;
} CapProbe;

static void probe_cap(void *opaque)
{
    CapProbe *p = opaque;
    static const int a;

    nbd_spin_note_request(&a, FAR_AHEAD);
    p->cap = nbd_spin_cap();
    p->window = nbd_spin_window(100000, LATER, 0);
}

/* In an iothread the cap is its poll-max-ns, and follows qom-set. */
static void test_iothread_cap(void **state)
{
    IOThreadParams params;
    CapProbe p;
    GError *err = NULL;

    (void)state;
    assert_int_equal(iothread_self_poll_max_ns(), -1);  /* main thread */
    iothread_params_default(&params);
    params.poll_max_ns = 0;
    IOThread *t = iothread_new("spin-test", &params, &err);
    assert_non_null(t);
    iothread_run_sync(t, probe_cap, &p);
    assert_int_equal(p.cap, 0);
    assert_int_equal(p.window, 0);
    params.poll_max_ns = 20000;
    assert_true(iothread_set_params(t, &params, &err));
    iothread_run_sync(t, probe_cap, &p);
    assert_int_equal(p.cap, 20000);
    assert_int_equal(p.window, 20000);
    params.poll_max_ns = 0;
    iothread_force_params(t, &params);             /* qom-set's path */
    iothread_run_sync(t, probe_cap, &p);
    assert_int_equal(p.window, 0);
    iothread_free(t);
}

/*
 * A real channel: with no cap it spins, with the cap 0 (in the main loop,
 * or in an iothread made with poll-max-ns=0) it never does.  The client
 * is a plain fd handler of the same loop, which sends the next request as
 * soon as the reply is in: the gaps the channel measures are a loop
 * iteration, short even on a busy machine, and no thread wake-up decides
 * whether the channel would spin.  Requests go on for longer than
 * NBD_SPIN_SHARED_NS: the channel's first one comes after an earlier
 * test's channel took its last.
 */
#define ROUNDS 300

typedef struct {
    int fd, client;
    uint32_t next;
    int64_t until;
    uint64_t spins;
} PingPong;

static void client_send(PingPong *s)
{
    if (s->next < ROUNDS || clock_ns() < s->until) {
        assert_int_equal(write(s->client, &s->next, 4), 4);
        s->next++;
    } else {
        shutdown(s->client, SHUT_WR);   /* the server reads end of file */
    }
}

static void client_on_reply(void *opaque)
{
    PingPong *s = opaque;
    uint32_t reply;

    if (read(s->client, &reply, 4) == 4) {
        assert_int_equal(reply, s->next - 1);
        client_send(s);
    }
}

static void ping_server(void *opaque)
{
    PingPong *s = opaque;
    NbdChannel *ch = nbd_channel_new(s->fd);
    guint watch = loop_add_fd(s->client, client_on_reply, s);
    uint64_t before = nbd_spin_count();
    uint32_t req;

    s->until = clock_ns() + 2 * NBD_SPIN_SHARED_NS;
    client_send(s);
    while (nbd_channel_read(ch, &req, sizeof(req)) == 1) {
        assert_int_equal(nbd_channel_write(ch, &req, sizeof(req)), 0);
    }
    assert_true(s->next >= ROUNDS);
    s->spins = nbd_spin_count() - before;
    loop_remove_fd(watch);
    nbd_channel_free(ch);
    close(s->client);
}

/* Spins of a channel served in t's loop (the main loop with t NULL). */
static uint64_t ping_pong(IOThread *t)
{
    int sv[2];
    PingPong s = { 0 };

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    s.fd = sv[0];
    s.client = sv[1];
    if (t) {
        co_call_in(iothread_loop(t), ping_server, &s);
    } else {
        co_run_sync(ping_server, &s);
    }
    return s.spins;
}

static void test_channel_cap_zero(void **state)
{
    IOThreadParams params;
    GError *err = NULL;

    (void)state;
    if (!ping_pong(NULL)) {
        skip();         /* no gap short enough: nothing to turn off */
    }
    nbd_server_set_main_poll_max_ns(0);
    assert_int_equal(ping_pong(NULL), 0);
    nbd_server_set_main_poll_max_ns(INT64_MAX);

    iothread_params_default(&params);
    params.poll_max_ns = 0;
    IOThread *t = iothread_new("spin-test", &params, &err);
    assert_non_null(t);
    assert_int_equal(ping_pong(t), 0);
    params.poll_max_ns = 128 * 1000;                /* qom-set at run time */
    iothread_force_params(t, &params);
    uint64_t spins = ping_pong(t);
    iothread_free(t);
    if (!spins) {
        skip();
    }
}

/*
 * A real channel beside another client's request in flight, in the main
 * loop or an iothread (the rule is process-wide): it never spins, where
 * alone it does.
 */
static void test_channel_other_inflight(void **state)
{
    IOThreadParams params;
    GError *err = NULL;
    static const int guest;

    (void)state;
    if (!ping_pong(NULL)) {
        skip();
    }
    nbd_spin_request_begin(&guest);
    assert_int_equal(ping_pong(NULL), 0);
    iothread_params_default(&params);
    params.poll_max_ns = 128 * 1000;
    IOThread *t = iothread_new("spin-test", &params, &err);
    assert_non_null(t);
    assert_int_equal(ping_pong(t), 0);
    nbd_spin_request_end(&guest, clock_ns());
    iothread_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: the others leave a deadline ten seconds ahead. */
        cmocka_unit_test(test_after_deadline),
        cmocka_unit_test(test_fd_during_spin),
        cmocka_unit_test(test_timer_during_spin),
        cmocka_unit_test(test_spin_alone),
        cmocka_unit_test(test_inflight_alone),
        cmocka_unit_test(test_stats_decisions),
        cmocka_unit_test(test_window_cut),
        cmocka_unit_test(test_window_cap),
        cmocka_unit_test(test_main_env),
        cmocka_unit_test(test_iothread_cap),
        cmocka_unit_test(test_channel_cap_zero),
        cmocka_unit_test(test_channel_other_inflight),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
