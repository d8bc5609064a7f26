/*
 * Background work in the thread pool: a job's copy offload
 * (copy_file_range) and write-behind (sync_file_range) calls run on a
 * worker at SCHED_IDLE, so that they give way at once to the loop
 * thread and the kernel threads that serve the guest, while every call
 * a guest request waits for keeps the normal class.
 *
 * A coroutine says that the pool calls it makes are background work by
 * opening a PoolBackground frame (pool_background_begin/end around
 * them); the calls that may run idle are the ones submitted with
 * thread_pool_co_run_background() from inside such a frame (file-copy.c's
 * copy_file_range, writeback.c's sync_file_range), and only while the
 * frame is not promoted.  Anything else in the pool (aio=threads reads
 * and writes, fallocate, fsync...) stays at normal class whoever asks.
 *
 * Whoever starts to wait for the frame's work (a guest write that needs
 * the same range copied first, a drain) promotes it: a queued call moves
 * to the normal queue, a running one gets its worker back to normal
 * class at once, and later calls of the frame run at normal class.
 * util/thread-pool.c says why this is enough against priority inversion.
 *
 * A call still running after 10 ms is promoted all the same, so a job
 * slows down on a busy machine but never stalls.
 *
 * STRATA_IDLE_COPY=0 in the environment turns the idle class off (every
 * call then runs at normal class, as before).
 */
#ifndef STRATA_POOL_CLASS_H
#define STRATA_POOL_CLASS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include "strata/coroutine.h"
#include "strata/loop.h"

typedef struct PoolBackground {
    /* private to util/thread-pool.c */
    Coroutine *co;
    _Atomic bool promoted;
    void *req;                      /* its call in the pool, or NULL */
    struct PoolBackground *next;    /* the thread's open frames */
} PoolBackground;

/* Coroutine context: the calling coroutine's background calls from now
 * on are idle class (bg lives until pool_background_end). */
void pool_background_begin(PoolBackground *bg);
void pool_background_end(PoolBackground *bg);

/*
 * From any coroutine of the frame's thread: its work is waited for.
 * Idempotent, cheap when the frame has nothing in the pool.
 */
void pool_background_promote(PoolBackground *bg);

/*
 * thread_pool_co_run(), at idle class when the calling coroutine is
 * inside an open, unpromoted frame and the idle class is on.
 */
int thread_pool_co_run_background(ThreadPoolFunc *fn, void *opaque);

/* Whether background calls run idle (STRATA_IDLE_COPY; tests set it). */
bool thread_pool_idle_enabled(void);
void thread_pool_set_idle_enabled(bool on);

/*
 * A background call not done after ms milliseconds is promoted (default
 * 10; 0: never): an idle thread must not stall a job on a busy machine.
 */
void thread_pool_set_idle_limit_ms(int ms);

/* Since the process started (tests, docs). */
typedef struct ThreadPoolClassStats {
    uint64_t idle_runs;     /* calls that started on a worker at idle class */
    uint64_t promoted;      /* calls promoted while queued or running */
} ThreadPoolClassStats;

void thread_pool_class_stats(ThreadPoolClassStats *st);

#endif
