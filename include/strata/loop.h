/*
 * The event loop.
 *
 * One StrataLoop per thread.  It lives inside a glib GMainContext (the
 * thread-default one), so GIO sockets, timers and signals attach to the same
 * context.  Block-layer code schedules work with bottom halves and waits with
 * LOOP_WAIT_WHILE(); it never blocks in a system call on the main thread.
 */
#ifndef STRATA_LOOP_H
#define STRATA_LOOP_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct StrataLoop StrataLoop;
typedef void LoopFunc(void *opaque);

/*
 * The calling thread's loop, created on first use: a loop of its own on
 * the context the thread pushed as its thread default (an iothread), or
 * else the main loop.  A thread without a context of its own (a pool
 * worker) may post BHs to the main loop (loop_bh() goes there) and attach
 * sources to its context, but not run it: loop_iterate() there stops the
 * program.
 */
StrataLoop *loop_get(void);
GMainContext *loop_context(StrataLoop *loop);
/* The main thread's loop (the one on glib's default context). */
StrataLoop *loop_main(void);

/* Run fn(opaque) once, soon, from the loop of the calling thread. */
void loop_bh(LoopFunc *fn, void *opaque);
/* Same, for another thread's loop (thread-safe). */
void loop_bh_remote(StrataLoop *loop, LoopFunc *fn, void *opaque);

/* Watch fd for readability; returns a source id for loop_remove_fd(). */
guint loop_add_fd(int fd, LoopFunc *on_readable, void *opaque);
void loop_remove_fd(guint id);

/* One iteration of the loop; blocking says whether to wait for an event. */
bool loop_iterate(bool blocking);

/*
 * How many times the calling thread's loop has polled its file
 * descriptors (rounds through its GMainContext; the BH-only fast path of
 * loop_iterate() does not count): work that runs without yielding in the
 * loop's thread (block/drivers/file.c's writes to tmpfs) takes a budget
 * per poll from it, so that the loop still polls now and then.
 */
uint64_t loop_poll_count(void);

/*
 * Whether the caller is the process's first thread, the one that runs the
 * main loop.  loop_get() answers the main loop in any thread without a
 * loop of its own (pool workers, migration threads), so it cannot tell.
 */
bool loop_in_main_thread(void);

/* Run the loop until cond becomes false (QEMU's AIO_WAIT_WHILE). */
#define LOOP_WAIT_WHILE(cond)                                                 \
    do {                                                                      \
        while (cond) {                                                        \
            loop_iterate(true);                                               \
        }                                                                     \
    } while (0)

int64_t clock_ns(void); /* CLOCK_MONOTONIC */

/* ---- Thread pool for blocking work (the "threads" I/O back end, create). ---- */

typedef int ThreadPoolFunc(void *opaque);

/*
 * Run fn(opaque) in a worker thread and yield until it returns; the result of
 * fn is returned.  Must be called from coroutine context.
 */
int thread_pool_co_run(ThreadPoolFunc *fn, void *opaque);
/* Worker count (default 64, like QEMU's pool). */
void thread_pool_set_max(int n);
/*
 * Requests submitted by coroutines of the calling thread that have not
 * returned to them yet: their completions will be posted to this thread's
 * loop, which must keep running until then.
 */
int thread_pool_waiting_here(void);
/*
 * Wait until no worker is still posting a completion: a thread whose
 * requests are all back calls it before its loop goes away.
 */
void thread_pool_posts_settle(void);

#endif
