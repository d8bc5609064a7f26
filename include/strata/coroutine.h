/*
 * Stackful coroutines.
 *
 * Every request and every job runs in a coroutine so that drivers read as
 * straight-line code.  A coroutine runs until it yields; it is resumed only by
 * co_enter() (from outside any coroutine or from its creator) or, from a
 * completion callback or another coroutine, by co_wake(), which schedules the
 * re-entry through the thread's loop.  Coroutines are bound to the thread that
 * created them.
 *
 * `coroutine_fn` marks functions that may only be called from coroutine
 * context (they may yield).
 */
#ifndef STRATA_COROUTINE_H
#define STRATA_COROUTINE_H

#include <stdbool.h>
#include <stdint.h>

#define coroutine_fn

typedef struct Coroutine Coroutine;
typedef void CoroutineEntry(void *opaque);

Coroutine *co_create(CoroutineEntry *entry, void *opaque);
/* Switch into co now; returns when co yields or terminates (then it is freed). */
void co_enter(Coroutine *co);
/* Schedule co to be entered from the loop (safe from callbacks and coroutines). */
void co_wake(Coroutine *co);
void coroutine_fn co_yield(void);
Coroutine *co_self(void);
bool in_coroutine(void);

/*
 * Run fn(opaque) in a new coroutine and drive the thread's loop until it has
 * finished.  For tools and tests that want a synchronous call; must not be
 * called from coroutine context.
 */
void co_run_sync(CoroutineEntry *fn, void *opaque);

/*
 * Run fn(opaque) to completion in a coroutine of the thread that runs
 * `loop` (an iothread's, or the main one), and come back: a coroutine
 * caller yields meanwhile, any other caller runs its own loop.  With loop
 * NULL or the caller's own, it is block_co_call(): fn runs here, directly
 * in coroutine context, else in a new coroutine.
 */
typedef struct StrataLoop StrataLoop;
void co_call_in(StrataLoop *loop, CoroutineEntry *fn, void *opaque);

/* ---- Synchronisation: the only ways for a coroutine to wait. ---- */

typedef struct CoWaiter CoWaiter;

typedef struct CoQueue {
    CoWaiter *head, *tail;
} CoQueue;

void co_queue_init(CoQueue *q);
/* Yield until woken by co_queue_next/co_queue_restart_all. */
void coroutine_fn co_queue_wait(CoQueue *q);
bool co_queue_next(CoQueue *q);       /* wake one waiter; false if none */
void co_queue_restart_all(CoQueue *q);
bool co_queue_empty(const CoQueue *q);

typedef struct CoMutex {
    bool locked;
    Coroutine *holder;
    CoQueue waiters;
    int urgent;      /* waiters that promote a background holder */
} CoMutex;

void co_mutex_init(CoMutex *m);
void coroutine_fn co_mutex_lock(CoMutex *m);
void coroutine_fn co_mutex_unlock(CoMutex *m);
/*
 * For util/thread-pool.c: co's background frames were just promoted; if
 * co waits for a CoMutex, it now promotes the holder's (util/co-lock.c).
 */
void co_mutex_boost_waiter(Coroutine *co);

typedef struct CoRwLock {
    int readers;     /* number of readers holding the lock */
    bool writer;     /* a writer holds the lock */
    int pending_writers; /* writers waiting: new readers queue behind them */
    CoQueue rqueue, wqueue;
} CoRwLock;

void co_rwlock_init(CoRwLock *l);
void coroutine_fn co_rwlock_rdlock(CoRwLock *l);
void coroutine_fn co_rwlock_wrlock(CoRwLock *l);
void coroutine_fn co_rwlock_unlock(CoRwLock *l);

/* Sleep for ns nanoseconds of CLOCK_MONOTONIC time. */
void coroutine_fn co_sleep_ns(int64_t ns);

#endif
