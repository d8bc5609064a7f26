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
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>
#include "strata/loop.h"
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
    assert_true(nbd_spin_alone(t));
    nbd_spin_note_request(&a, t + 1);
    assert_true(nbd_spin_alone(t + 2));
    nbd_spin_note_request(&b, t + 3);           /* another client */
    assert_false(nbd_spin_alone(t + 4));
    nbd_spin_note_request(&a, t + 5);           /* and back */
    assert_false(nbd_spin_alone(t + 5 + NBD_SPIN_SHARED_NS - 1));
    assert_true(nbd_spin_alone(t + 5 + NBD_SPIN_SHARED_NS));
    nbd_spin_note_request(&a, t + 6 + NBD_SPIN_SHARED_NS);
    assert_true(nbd_spin_alone(t + 7 + NBD_SPIN_SHARED_NS));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: the others leave a deadline ten seconds ahead. */
        cmocka_unit_test(test_after_deadline),
        cmocka_unit_test(test_fd_during_spin),
        cmocka_unit_test(test_timer_during_spin),
        cmocka_unit_test(test_spin_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
