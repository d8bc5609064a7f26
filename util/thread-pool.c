/*
 * Thread pool for work that blocks: pread/pwrite for aio=threads,
 * fallocate, fsync, image creation.  The submitting coroutine yields; the
 * worker hands the result back to the submitter's loop with a remote BH.
 *
 * A small pool of our own rather than GThreadPool: under 32 requests in
 * flight GThreadPool's queue and wake-up protocol cost about 15 futex calls
 * per request (measured with strace -c); here a request costs a signal only
 * when a worker is idle, and workers take whatever is queued before they
 * sleep again.
 *
 * pthread's mutex and a POSIX semaphore rather than glib's: on Linux
 * GMutex and GCond are futexes driven by atomics inside libglib, which
 * ThreadSanitizer does not instrument, so under TSan every hand-over of a
 * request through them looked like a data race (pthread's and sem_* are
 * intercepted).
 *
 * Idle workers sleep on a semaphore, not a condition variable: glibc's
 * pthread_cond_signal (2.25 to 2.40) may wait in the kernel until workers
 * woken earlier have run (__condvar_quiesce_and_switch_g1), and on a busy
 * machine that took 8-27 ms each time, in the loop thread, while the
 * guest's requests waited (342 such waits, 573 ms in a 2.5 s commit under
 * load: docs/performance.md, "Intermediate commit under guest writes:
 * where the guest waited").  sem_post never waits.
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <time.h>
#include <glib.h>
#include "strata/coroutine.h"
#include "strata/loop.h"

typedef struct PoolReq {
    ThreadPoolFunc *fn;
    void *opaque;
    int ret;
    bool done;          /* set by the completion BH, in the submitter's thread */
    Coroutine *co;
    StrataLoop *loop;
    struct PoolReq *next;
} PoolReq;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static sem_t pool_sem;     /* one token per wake-up (pool_wakes of them) */
static pthread_once_t pool_sem_once = PTHREAD_ONCE_INIT;
static PoolReq *queue_head, **queue_tail = &queue_head;
static int pool_max = 64;
static int pool_threads;   /* workers alive */
static int pool_idle;      /* workers waiting for work */
static int pool_wakes;     /* tokens posted that no worker has taken yet */

/*
 * Requests submitted from this thread whose submitter has not resumed
 * yet: the thread's loop must live until their completions have landed
 * (an iothread waits for them before it exits).
 */
static __thread int pool_waiting;

/*
 * Held for reading by a worker while it posts a completion (its last
 * touch of the submitter's loop), for writing by a thread about to free
 * its loop: that waits for posts in progress.  They only hold a reference
 * to the loop's context by then, which is safe, but through glib's atomics
 * that ThreadSanitizer cannot see; this makes the hand-over visible.
 * Writers first, so that a stream of completions cannot hold one off.
 */
static pthread_rwlock_t post_lock;
static pthread_once_t post_lock_once = PTHREAD_ONCE_INIT;

static void post_lock_init(void)
{
    pthread_rwlockattr_t a;
    pthread_rwlockattr_init(&a);
    pthread_rwlockattr_setkind_np(&a,
        PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&post_lock, &a);
    pthread_rwlockattr_destroy(&a);
}

/* An idle worker exits after this long, so an idle process keeps no threads. */
#define POOL_IDLE_SEC 10

static void pool_sem_init(void)
{
    sem_init(&pool_sem, 0, 0);
}

static void pool_complete_bh(void *opaque)
{
    PoolReq *req = opaque;
    req->done = true;
    co_enter(req->co);
}

static gpointer pool_worker(gpointer unused)
{
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        while (!queue_head) {
            /* The idle timeout is on CLOCK_REALTIME (sem_timedwait's):
             * a clock step only changes when an idle worker exits. */
            struct timespec deadline;
            int r;
            clock_gettime(CLOCK_REALTIME, &deadline);
            deadline.tv_sec += POOL_IDLE_SEC;
            pool_idle++;
            pthread_mutex_unlock(&pool_lock);
            do {
                r = sem_timedwait(&pool_sem, &deadline);
            } while (r < 0 && errno == EINTR);
            pthread_mutex_lock(&pool_lock);
            pool_idle--;
            if (r == 0) {
                pool_wakes--;
            } else if (!queue_head) {
                pool_threads--;
                pthread_mutex_unlock(&pool_lock);
                return NULL;
            }
        }
        PoolReq *req = queue_head;
        queue_head = req->next;
        if (!queue_head) {
            queue_tail = &queue_head;
        }
        pthread_mutex_unlock(&pool_lock);

        req->ret = req->fn(req->opaque);
        pthread_rwlock_rdlock(&post_lock);
        loop_bh_remote(req->loop, pool_complete_bh, req);
        pthread_rwlock_unlock(&post_lock);

        pthread_mutex_lock(&pool_lock);
    }
}

void thread_pool_set_max(int n)
{
    pthread_mutex_lock(&pool_lock);
    pool_max = n > 0 ? n : 1;
    pthread_mutex_unlock(&pool_lock);
}

int thread_pool_co_run(ThreadPoolFunc *fn, void *opaque)
{
    g_assert(in_coroutine());
    PoolReq req = {
        .fn = fn, .opaque = opaque, .co = co_self(), .loop = loop_get(),
    };
    bool wake = false;
    pthread_once(&pool_sem_once, pool_sem_init);
    pthread_once(&post_lock_once, post_lock_init);
    pthread_mutex_lock(&pool_lock);
    *queue_tail = &req;
    queue_tail = &req.next;
    if (pool_idle > pool_wakes) {
        /* Count wake-ups in flight so each queued request wakes one worker. */
        pool_wakes++;
        wake = true;
    } else if (pool_idle == 0 && pool_threads < pool_max) {
        pool_threads++;
        GThread *t = g_thread_new("strata-worker", pool_worker, NULL);
        g_thread_unref(t);
    }
    /* Otherwise a busy worker takes it when it finishes its request. */
    pthread_mutex_unlock(&pool_lock);
    /* Posted outside the lock: the woken worker need not wait for it. */
    if (wake) {
        sem_post(&pool_sem);
    }
    /*
     * req lives on this stack until its completion BH has run: the worker
     * reads fn, opaque and loop and writes ret up to its loop_bh_remote().
     * An entry that is not that BH's (a co_wake() left over from an earlier
     * wait) must not make us return meanwhile, or the worker writes into a
     * frame this coroutine has reused (a SIGBUS in loop_bh_remote, reading
     * a stale req->loop).  Wait as the aio engines do, until done.
     */
    pool_waiting++;
    while (!req.done) {
        co_yield();
    }
    pool_waiting--;
    return req.ret;
}

int thread_pool_waiting_here(void)
{
    return pool_waiting;
}

void thread_pool_posts_settle(void)
{
    pthread_once(&post_lock_once, post_lock_init);
    pthread_rwlock_wrlock(&post_lock);
    pthread_rwlock_unlock(&post_lock);
}
