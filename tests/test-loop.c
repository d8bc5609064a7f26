/*
 * Which loop a thread gets (util/loop.c, loop_get()).
 *
 * A thread that has pushed a GMainContext of its own (an iothread) gets a
 * loop on it, freed when the thread exits.  Any other thread (a pool
 * worker, a migration channel) has no loop of its own: it gets the main
 * loop, the one on glib's default context, which the main thread runs.
 * Such a thread used to get a second loop on the default context, which
 * then became loop_main() and was freed when the thread exited; the BHs
 * it was given were never run.
 *
 * The cases are in order: the first one must run before the main thread
 * has asked for its loop.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <glib.h>
#include "strata/loop.h"

typedef struct {
    gint ran;
    GThread *ran_in;
} Flag;

static void flag_bh(void *opaque)
{
    Flag *f = opaque;
    f->ran_in = g_thread_self();
    g_atomic_int_set(&f->ran, 1);
}

/* Run the calling thread's loop for at most 2 s or until f ran. */
static bool wait_ran(Flag *f)
{
    int64_t end = clock_ns() + 2000 * 1000000LL;
    while (!g_atomic_int_get(&f->ran) && clock_ns() < end) {
        loop_iterate(false);
        g_usleep(500);
    }
    return g_atomic_int_get(&f->ran);
}

typedef struct {
    StrataLoop *got, *main;
    Flag *flag;
} Seen;

static gpointer post_to_main_thread(gpointer opaque)
{
    Seen *s = opaque;
    s->main = loop_main();
    loop_bh_remote(s->main, flag_bh, s->flag);
    return NULL;
}

/* A thread asks for the main loop before the main thread has used it. */
static void test_main_loop_asked_first_by_a_thread(void **state)
{
    Flag f = { 0 };
    Seen s = { .flag = &f };
    GThread *t = g_thread_new("early", post_to_main_thread, &s);
    g_thread_join(t);
    /* The thread has exited: what it called the main loop is still ours. */
    assert_ptr_equal(s.main, loop_get());
    assert_ptr_equal(loop_main(), loop_get());
    assert_true(wait_ran(&f));
    assert_ptr_equal(f.ran_in, g_thread_self());
}

static gpointer get_loop_and_bh(gpointer opaque)
{
    Seen *s = opaque;
    s->got = loop_get();
    s->main = loop_main();
    /* A BH of a thread without a loop runs in the main loop. */
    loop_bh(flag_bh, s->flag);
    return NULL;
}

static void test_thread_without_context_gets_main_loop(void **state)
{
    StrataLoop *mine = loop_get();
    Flag f = { 0 };
    Seen s = { .flag = &f };
    GThread *t = g_thread_new("no-context", get_loop_and_bh, &s);
    g_thread_join(t);
    assert_ptr_equal(s.got, mine);
    assert_ptr_equal(s.main, mine);
    assert_ptr_equal(loop_main(), mine);
    assert_true(wait_ran(&f));
    assert_ptr_equal(f.ran_in, g_thread_self());
}

/* An iothread-like thread still gets a loop of its own on its context. */
static gpointer own_context(gpointer opaque)
{
    Seen *s = opaque;
    GMainContext *ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    s->got = loop_get();
    s->main = loop_main();
    loop_bh(flag_bh, s->flag);
    while (!g_atomic_int_get(&s->flag->ran)) {
        loop_iterate(true);
    }
    g_main_context_pop_thread_default(ctx);
    g_main_context_unref(ctx);
    return NULL;
}

static void test_thread_with_context_gets_its_own(void **state)
{
    Flag f = { 0 };
    Seen s = { .flag = &f };
    GThread *t = g_thread_new("own-context", own_context, &s);
    g_thread_join(t);
    assert_ptr_not_equal(s.got, loop_get());
    assert_ptr_equal(s.main, loop_get());
    assert_true(g_atomic_int_get(&f.ran));
    assert_ptr_not_equal(f.ran_in, g_thread_self());
}

/*
 * Running the main loop from a thread that is not the main thread would
 * make two threads dispatch one context: it stops the program, with a
 * message, rather than do so.  Checked in a child process.
 */
static gpointer iterate_borrowed(gpointer opaque)
{
    loop_iterate(false);
    return NULL;
}

static void test_iterate_without_own_loop_stops(void **state)
{
    (void)loop_get();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* glib's message about it goes to stderr, expected here */
        GThread *t = g_thread_new("iterate", iterate_borrowed, NULL);
        g_thread_join(t);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_main_loop_asked_first_by_a_thread),
        cmocka_unit_test(test_thread_without_context_gets_main_loop),
        cmocka_unit_test(test_thread_with_context_gets_its_own),
        cmocka_unit_test(test_iterate_without_own_loop_stops),
    };
    if (g_getenv("TEST_FILTER")) {
        cmocka_set_test_filter(g_getenv("TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
