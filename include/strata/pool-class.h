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
 * copy_file_range, writeback.c's sync_file_range, and the file writes a
 * frame asks for with pool_background_writes_begin), and only while the
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
 * call then runs at normal class, as before).  So does a worker that
 * finds itself unable to leave SCHED_IDLE after a call (the right to
 * went away after the start-up probe): it touches nothing shared any
 * more, leaves its completion to the pool's watchdog thread and parks
 * for good, and a new worker takes its place (util/thread-pool.c).
 */
#ifndef STRATA_POOL_CLASS_H
#define STRATA_POOL_CLASS_H

#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "strata/coroutine.h"
#include "strata/loop.h"

typedef struct PoolBackground {
    /* private to util/thread-pool.c */
    Coroutine *co;
    _Atomic bool promoted;
    int writes;                     /* pool_background_writes_begin depth */
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
 * From any coroutine of co's thread: the open frames of coroutine co are
 * waited for (a request that co issued is in someone's way: block/io.c's
 * wait_serialising, the copy-on-read filter's copies).  Cheap when co
 * has none.  If co waits for a CoMutex, the holder's frames are promoted
 * too (priority inheritance, util/co-lock.c), and so on down the chain.
 */
void pool_background_promote_co(Coroutine *co);

/*
 * Coroutine context, inside a frame: the calling coroutine's plain data
 * writes to files (block/drivers/file.c) are background calls too until
 * the matching end, so they run idle while the frame is not promoted.
 * For writes nobody waits for, of data that is somewhere else already;
 * the writer must make sure that whoever waits for such a write promotes
 * the frame.  (The stream's copy-on-read writes used it; at idle class
 * they bought the guest nothing and cost CPU, so no caller opens it now:
 * tests/test-idle-copy.c keeps the inheritance it relies on tested.)  Returns whether a
 * frame is open (end is then due); nests.
 */
bool pool_background_writes_begin(void);
void pool_background_writes_end(void);

/* Whether the calling coroutine is inside an open frame that is not
 * promoted (idle class on or not; no probe): a CoMutex waiter that is
 * background work itself promotes no holder (util/co-lock.c). */
bool pool_background_unpromoted_here(void);

/* Whether a plain file write of the calling coroutine runs idle now. */
bool pool_background_write_idle(void);

/* Whether the calling coroutine is inside an open frame that is not
 * promoted, with the idle class on: its background calls would run idle. */
bool pool_background_idle_here(void);

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
    uint64_t stuck;         /* workers that could not leave idle class */
} ThreadPoolClassStats;

void thread_pool_class_stats(ThreadPoolClassStats *st);

/*
 * Tests: the sched_setscheduler(2) the pool calls to change a worker's
 * class (NULL: the real one), to simulate a lost right or a starved idle
 * thread.  Not the start-up probe's.
 */
typedef int ThreadPoolSchedFunc(pid_t tid, int policy,
                                const struct sched_param *p);
void thread_pool_set_sched_hook(ThreadPoolSchedFunc *fn);

#endif
