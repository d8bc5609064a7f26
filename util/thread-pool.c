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
 *
 * Background calls (strata/pool-class.h) run at SCHED_IDLE.  A worker is
 * at idle class only inside the background call itself: it switches
 * right before the call and back right after it, before it touches
 * anything that a thread at normal class may wait for (this pool's lock,
 * the loop's completion list).  That costs two sched_setscheduler calls
 * per background call (about a microsecond each, against a copy of up to
 * a MiB); a worker that stayed idle from one background call to the next
 * would take pool_lock at idle class, and a wake-up of any normal thread
 * on its CPU preempts an idle thread at once: the loop thread would then
 * block on the lock until the idle worker got a CPU again, which on a
 * busy machine is whenever every normal thread sleeps.
 *
 * Priority inversion the other way (a guest request waiting for work
 * that runs idle) is avoided in four ways:
 * - Normal calls never wait behind background ones: they have a queue of
 *   their own that workers empty first, and workers busy with background
 *   calls do not count against pool_max when a normal call needs one.
 * - Whoever waits for a background call promotes it
 *   (pool_background_promote): queued, it moves to the normal queue;
 *   running, its worker is set back to normal class by the promoter
 *   (sched_setscheduler on the worker's thread id), so the call finishes
 *   at normal speed.  The copy engine promotes a task when a guest write
 *   or a drain starts to wait for it, and all its tasks while guest
 *   writes copy through it (jobs/block-copy.c).  A coroutine lock held
 *   by background work is waited for too: a CoMutex waiter that is not
 *   unpromoted background work promotes the holder's frames, and a
 *   promoted coroutine that waits for a CoMutex promotes its holder in
 *   turn (util/co-lock.c), so qcow2's metadata writes of an idle write
 *   window (pool_background_writes_begin), made under s->lock, do not
 *   hold a guest's read or flush behind them;
 *   qcow2's allocation claims promote their owner the same way.
 * - A background call that has not returned after idle_limit_ms (10) is
 *   promoted as if waited for, by a watchdog thread of the pool's (at
 *   normal class), not by a timer of the submitter's loop: the loop
 *   thread itself may be what waits for the idle call, blocked in the
 *   kernel on a lock the call holds (the inode lock that copy_file_range
 *   takes on ext4, wanted by an aio=native io_submit or by lseek
 *   SEEK_DATA on the same file), and a blocked loop runs no timer.  An
 *   idle thread gets almost no CPU while normal threads of its group keep
 *   the CPUs busy (weight 3 against 1024): a 2 GiB commit took 9.9 s
 *   instead of 2.4 s in one rep on a loaded machine without this bound
 *   (docs/performance.md, "Background copies at idle class").  A MiB
 *   copies in about a millisecond when a CPU is free, so the bound only
 *   ends the waits of a starving call; and whatever a guest may wait for
 *   without the engine knowing (a lock in the kernel) is held up 10 ms at
 *   most.
 * - Taking normal class back needs a right the process may not have (an
 *   unprivileged thread leaves SCHED_IDLE only within RLIMIT_NICE, 20 for
 *   nice 0): the first background call checks it in a thread of its own,
 *   and without it the idle class stays off, as a promotion could not
 *   work.  Should the right go later (setrlimit, a capability dropped), a
 *   worker that cannot come back after its call is stuck at idle class
 *   for good: any lock it then took (this pool's, the post lock, the
 *   loop's, malloc's or the thread library's on exit) could keep a normal
 *   thread waiting for as long as it gets no CPU.  So it takes none: it
 *   pushes its request on a lock-free list, wakes the watchdog (a
 *   sem_post) and parks in pause() until the process ends; the watchdog,
 *   at normal class, posts the completion, counts the worker out of the
 *   pool (a new one starts when work comes), turns the idle class off and
 *   says so once on stderr.
 * I/O priority is left alone (no ioprio_set): the writeback bios that a
 * sync_file_range at idle I/O class submits would carry that class, and
 * the job's final flush, then the guest's next sync on the same device
 * queue, would wait behind them in the I/O scheduler, which has no
 * priority inheritance.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <glib.h>
#include "strata/coroutine.h"
#include "strata/loop.h"
#include "strata/pool-class.h"

typedef struct PoolReq {
    ThreadPoolFunc *fn;
    void *opaque;
    int ret;
    bool done;          /* set by the completion BH, in the submitter's thread */
    Coroutine *co;
    StrataLoop *loop;
    struct PoolReq *next;
    /* Background calls: the frame, whether it is queued as one (cleared
     * by a promotion while queued), and the worker's thread id while it
     * runs the call at idle class (0 otherwise). */
    PoolBackground *bg;
    bool bg_queued;
    _Atomic pid_t idle_tid;
    int normal_policy;          /* the worker's class to promote it to */
    /* On the watchdog's list while it runs idle (wd_lock). */
    int64_t wd_deadline_ns;     /* CLOCK_MONOTONIC */
    bool wd_fired;
    struct PoolReq *wd_next;
    struct PoolReq *stuck_next; /* on stuck_reqs (lock-free) */
} PoolReq;

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static sem_t pool_sem;     /* one token per wake-up (pool_wakes of them) */
static pthread_once_t pool_sem_once = PTHREAD_ONCE_INIT;
static PoolReq *queue_head, **queue_tail = &queue_head;
static PoolReq *bg_head, **bg_tail = &bg_head;  /* background calls */
static int pool_max = 64;
static int pool_threads;   /* workers alive */
static int pool_bg_running; /* workers running a background call */
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

/* ---- Scheduling class of background calls ---- */

/* -1: not decided yet (STRATA_IDLE_COPY, then the probe), 0 off, 1 on. */
static atomic_int idle_on = -1;
static _Atomic uint64_t stat_idle_runs, stat_promoted, stat_stuck;
static atomic_int idle_limit_ms = 10;   /* 0: no limit (tests) */
static pthread_once_t idle_probe_once = PTHREAD_ONCE_INIT;

/*
 * Whether a thread of this process may go to SCHED_IDLE and come back:
 * tried in a thread of its own, which exits either way.
 */
static gpointer idle_probe_thread(gpointer unused)
{
    struct sched_param p = { 0 };
    int policy = sched_getscheduler(0);
    bool ok = (policy == SCHED_OTHER || policy == SCHED_BATCH) &&
              sched_setscheduler(0, SCHED_IDLE, &p) == 0 &&
              sched_setscheduler(0, policy, &p) == 0;
    return GINT_TO_POINTER(ok);
}

static void idle_probe(void)
{
    const char *e = g_getenv("STRATA_IDLE_COPY");
    int want = 1;

    if (e && (!strcmp(e, "0") || !g_ascii_strcasecmp(e, "off") ||
              !g_ascii_strcasecmp(e, "no"))) {
        want = 0;
    }
    if (want) {
        GThread *t = g_thread_new("strata-probe", idle_probe_thread, NULL);
        want = GPOINTER_TO_INT(g_thread_join(t));
    }
    int unset = -1;
    /* thread_pool_set_idle_enabled() may have decided first. */
    atomic_compare_exchange_strong(&idle_on, &unset, want);
}

bool thread_pool_idle_enabled(void)
{
    if (atomic_load(&idle_on) < 0) {
        pthread_once(&idle_probe_once, idle_probe);
    }
    return atomic_load(&idle_on) > 0;
}

void thread_pool_set_idle_enabled(bool on)
{
    atomic_store(&idle_on, on ? 1 : 0);
}

void thread_pool_set_idle_limit_ms(int ms)
{
    atomic_store(&idle_limit_ms, ms);
}

void thread_pool_class_stats(ThreadPoolClassStats *st)
{
    st->idle_runs = atomic_load(&stat_idle_runs);
    st->promoted = atomic_load(&stat_promoted);
    st->stuck = atomic_load(&stat_stuck);
}

static _Atomic(ThreadPoolSchedFunc *) sched_hook;

void thread_pool_set_sched_hook(ThreadPoolSchedFunc *fn)
{
    atomic_store(&sched_hook, fn);
}

/* sched_setscheduler, or the tests' stand-in. */
static int sched_set(pid_t tid, int policy, const struct sched_param *p)
{
    ThreadPoolSchedFunc *fn = atomic_load(&sched_hook);
    return fn ? fn(tid, policy, p) : sched_setscheduler(tid, policy, p);
}

static pid_t worker_tid(void)
{
    return (pid_t)gettid();
}

/* The thread's policy when it runs no background call. */
static __thread int worker_policy = -1;

static bool set_idle(pid_t tid, bool idle)
{
    struct sched_param p = { 0 };
    return sched_set(tid, idle ? SCHED_IDLE : worker_policy, &p) == 0;
}

/* ---- The watchdog: idle_limit_ms for calls running idle ---- */

static pthread_mutex_t wd_lock = PTHREAD_MUTEX_INITIALIZER;
/*
 * The watchdog sleeps on a semaphore (sem_clockwait on CLOCK_MONOTONIC):
 * a worker stuck at idle class must be able to wake it without a lock,
 * which pthread_cond_signal takes inside (its group switch).
 */
static sem_t wd_sem;
static pthread_once_t wd_once = PTHREAD_ONCE_INIT;
static PoolReq *wd_list;                /* calls running idle */
/* Requests whose worker could not leave idle class (run_background). */
static _Atomic(PoolReq *) stuck_reqs;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/*
 * The end of a call whose worker is stuck at idle class, done here at
 * normal class in the worker's place: counted out of the pool (a new
 * worker starts when work needs one), its completion posted.
 */
static void stuck_finish(PoolReq *req)
{
    static bool told;

    if (!told) {
        told = true;
        g_printerr("strata: a pool worker could not leave SCHED_IDLE after "
                   "a background call (the right to was lost after start-up): "
                   "background calls run at normal class from now on\n");
    }
    atomic_fetch_add(&stat_stuck, 1);
    pthread_mutex_lock(&pool_lock);
    pool_bg_running--;
    pool_threads--;
    pthread_mutex_unlock(&pool_lock);
    pthread_rwlock_rdlock(&post_lock);
    loop_bh_remote(req->loop, pool_complete_bh, req);
    pthread_rwlock_unlock(&post_lock);
}

static void wd_unlink_locked(PoolReq *req)
{
    for (PoolReq **p = &wd_list; *p; p = &(*p)->wd_next) {
        if (*p == req) {
            *p = req->wd_next;
            break;
        }
    }
}

/*
 * Promotes the calls past their deadline, and finishes the calls of
 * stuck workers.  It holds wd_lock while it changes a worker's class,
 * and a worker takes itself off the list under that lock before it goes
 * on to anything else, so the thread id is still the call's (a stuck
 * worker is taken off here).  Runs for the life of the process once
 * started (an idle thread, asleep on the semaphore, when no call runs
 * idle).
 */
static gpointer wd_thread(gpointer unused)
{
    for (;;) {
        pthread_mutex_lock(&wd_lock);
        PoolReq *stuck = atomic_exchange(&stuck_reqs, NULL);
        for (PoolReq *r = stuck; r; r = r->stuck_next) {
            wd_unlink_locked(r);
        }
        int64_t now = mono_ns(), next = INT64_MAX;
        for (PoolReq *r = wd_list; r; r = r->wd_next) {
            if (r->wd_fired) {
                continue;
            }
            if (r->wd_deadline_ns <= now) {
                struct sched_param p = { 0 };
                pid_t tid = atomic_load(&r->idle_tid);
                r->wd_fired = true;
                /* The rest of its frame's calls run at normal class too,
                 * as after any promotion; the frame outlives the call. */
                atomic_store(&r->bg->promoted, true);
                if (tid && sched_set(tid, r->normal_policy, &p) == 0) {
                    atomic_fetch_add(&stat_promoted, 1);
                }
            } else {
                next = MIN(next, r->wd_deadline_ns);
            }
        }
        pthread_mutex_unlock(&wd_lock);
        while (stuck) {
            PoolReq *r = stuck;
            stuck = r->stuck_next;      /* r may be gone once posted */
            stuck_finish(r);
        }
        int ret;
        if (next == INT64_MAX) {
            do {
                ret = sem_wait(&wd_sem);
            } while (ret < 0 && errno == EINTR);
        } else {
            struct timespec ts = {
                .tv_sec = next / 1000000000, .tv_nsec = next % 1000000000,
            };
            do {
                ret = sem_clockwait(&wd_sem, CLOCK_MONOTONIC, &ts);
            } while (ret < 0 && errno == EINTR);
        }
    }
    return NULL;
}

static void wd_init(void)
{
    sem_init(&wd_sem, 0, 0);
    g_thread_unref(g_thread_new("strata-pool-wd", wd_thread, NULL));
}

/* Called at normal class, before the worker goes idle. */
static void wd_add(PoolReq *req, int ms)
{
    pthread_mutex_lock(&wd_lock);
    req->wd_deadline_ns = mono_ns() + (int64_t)ms * 1000000;
    req->wd_fired = false;
    req->wd_next = wd_list;
    wd_list = req;
    pthread_mutex_unlock(&wd_lock);
    sem_post(&wd_sem);
}

/* Called after the call, back at normal class. */
static void wd_remove(PoolReq *req)
{
    pthread_mutex_lock(&wd_lock);
    wd_unlink_locked(req);
    pthread_mutex_unlock(&wd_lock);
}

/*
 * The worker could not leave idle class after req's call: hand req to
 * the watchdog with nothing but atomics and a sem_post (no lock a normal
 * thread may take), and never run again.
 */
static _Noreturn void worker_park_stuck(PoolReq *req)
{
    PoolReq *head = atomic_load(&stuck_reqs);
    do {
        req->stuck_next = head;
    } while (!atomic_compare_exchange_weak(&stuck_reqs, &head, req));
    sem_post(&wd_sem);
    for (;;) {
        pause();
    }
}

/*
 * Run a background call: at idle class unless its frame was promoted
 * meanwhile.  The promoter sets the flag before it changes the class of
 * idle_tid, and we look at the flag after our own change: whichever
 * comes last, the call ends up at normal class once promoted.  Returns
 * false when the worker could not go back to normal class (it must not
 * run normal calls any more).
 */
static bool run_background(PoolReq *req)
{
    bool went_idle = false;

    if (worker_policy < 0) {
        worker_policy = sched_getscheduler(0);
    }
    int limit_ms = atomic_load(&idle_limit_ms);
    bool watched = false;
    if (!atomic_load(&req->bg->promoted) &&
        (worker_policy == SCHED_OTHER || worker_policy == SCHED_BATCH)) {
        /* Started at normal class: a stuck worker needs the watchdog. */
        pthread_once(&wd_once, wd_init);
        req->normal_policy = worker_policy;
        atomic_store(&req->idle_tid, worker_tid());
        if (limit_ms > 0) {
            wd_add(req, limit_ms);
            watched = true;
        }
        went_idle = set_idle(0, true);
        if (went_idle) {
            atomic_fetch_add(&stat_idle_runs, 1);
            if (atomic_load(&req->bg->promoted)) {
                set_idle(0, false);
            }
        }
    }
    req->ret = req->fn(req->opaque);
    /* Back before the completion and the locks (a promotion may have done
     * it already; once more costs a system call). */
    bool back = !went_idle || set_idle(0, false);
    if (!back) {
        /* Rights lost since the probe: no more idle calls.  The watchdog
         * takes req off its list. */
        thread_pool_set_idle_enabled(false);
        atomic_store(&req->idle_tid, 0);
        return false;
    }
    if (watched) {
        wd_remove(req);
    }
    atomic_store(&req->idle_tid, 0);
    return true;
}

static PoolReq *take_request(void)
{
    PoolReq *req;

    if (queue_head) {
        req = queue_head;
        queue_head = req->next;
        if (!queue_head) {
            queue_tail = &queue_head;
        }
        return req;
    }
    req = bg_head;
    bg_head = req->next;
    if (!bg_head) {
        bg_tail = &bg_head;
    }
    req->bg_queued = false;
    return req;
}

static gpointer pool_worker(gpointer unused)
{
    pthread_mutex_lock(&pool_lock);
    for (;;) {
        while (!queue_head && !bg_head) {
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
            } else if (!queue_head && !bg_head) {
                pool_threads--;
                pthread_mutex_unlock(&pool_lock);
                return NULL;
            }
        }
        bool bg_class = queue_head == NULL;
        PoolReq *req = take_request();
        /* Promoted while queued: it is in the normal queue, bg stays set. */
        bool background = bg_class && req->bg;
        pool_bg_running += background;
        pthread_mutex_unlock(&pool_lock);

        if (background) {
            if (!run_background(req)) {
                worker_park_stuck(req);
            }
        } else {
            req->ret = req->fn(req->opaque);
        }
        pthread_rwlock_rdlock(&post_lock);
        loop_bh_remote(req->loop, pool_complete_bh, req);
        pthread_rwlock_unlock(&post_lock);

        pthread_mutex_lock(&pool_lock);
        pool_bg_running -= background;
    }
}

void thread_pool_set_max(int n)
{
    pthread_mutex_lock(&pool_lock);
    pool_max = n > 0 ? n : 1;
    pthread_mutex_unlock(&pool_lock);
}

/* The open background frames of this thread's coroutines. */
static __thread PoolBackground *bg_frames;

void pool_background_begin(PoolBackground *bg)
{
    g_assert(in_coroutine());
    *bg = (PoolBackground) { .co = co_self(), .next = bg_frames };
    bg_frames = bg;
}

void pool_background_end(PoolBackground *bg)
{
    g_assert(!bg->req && bg->writes == 0);
    for (PoolBackground **p = &bg_frames; *p; p = &(*p)->next) {
        if (*p == bg) {
            *p = bg->next;
            return;
        }
    }
    g_assert_not_reached();
}

static PoolBackground *frame_of(Coroutine *co)
{
    for (PoolBackground *f = bg_frames; f; f = f->next) {
        if (f->co == co) {
            return f;
        }
    }
    return NULL;
}

static PoolBackground *current_frame(void)
{
    return frame_of(co_self());
}

bool pool_background_writes_begin(void)
{
    PoolBackground *f = current_frame();
    if (f) {
        f->writes++;
    }
    return f != NULL;
}

void pool_background_writes_end(void)
{
    PoolBackground *f = current_frame();
    g_assert(f && f->writes > 0);
    f->writes--;
}

bool pool_background_idle_here(void)
{
    PoolBackground *f = bg_frames ? current_frame() : NULL;
    return f && !atomic_load(&f->promoted) && thread_pool_idle_enabled();
}

bool pool_background_write_idle(void)
{
    PoolBackground *f = bg_frames ? current_frame() : NULL;
    return f && f->writes > 0 && !atomic_load(&f->promoted) &&
           thread_pool_idle_enabled();
}

/* Queue req, and wake or start a worker for it (pool_lock held).  A
 * normal call does not count workers busy with background calls: they
 * never keep it waiting.  Returns whether to post a wake-up. */
static bool enqueue_locked(PoolReq *req)
{
    int busy = pool_threads;

    if (req->bg_queued) {
        *bg_tail = req;
        bg_tail = &req->next;
    } else {
        *queue_tail = req;
        queue_tail = &req->next;
        busy -= pool_bg_running;
    }
    if (pool_idle > pool_wakes) {
        /* Count wake-ups in flight so each queued request wakes one worker. */
        pool_wakes++;
        return true;
    }
    if (pool_idle == 0 && busy < pool_max) {
        pool_threads++;
        GThread *t = g_thread_new("strata-worker", pool_worker, NULL);
        g_thread_unref(t);
    }
    /* Otherwise a busy worker takes it when it finishes its request. */
    return false;
}

static int pool_run(ThreadPoolFunc *fn, void *opaque, PoolBackground *bg)
{
    g_assert(in_coroutine());
    PoolReq req = {
        .fn = fn, .opaque = opaque, .co = co_self(), .loop = loop_get(),
        .bg = bg, .bg_queued = bg != NULL,
    };
    bool wake;
    pthread_once(&pool_sem_once, pool_sem_init);
    pthread_once(&post_lock_once, post_lock_init);
    pthread_mutex_lock(&pool_lock);
    if (bg) {
        bg->req = &req;
    }
    wake = enqueue_locked(&req);
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
    if (bg) {
        /* The promoter runs in this thread too: no race with it here. */
        bg->req = NULL;
    }
    return req.ret;
}

int thread_pool_co_run(ThreadPoolFunc *fn, void *opaque)
{
    return pool_run(fn, opaque, NULL);
}

int thread_pool_co_run_background(ThreadPoolFunc *fn, void *opaque)
{
    PoolBackground *bg = current_frame();

    if (!bg || atomic_load(&bg->promoted) || !thread_pool_idle_enabled()) {
        return pool_run(fn, opaque, NULL);
    }
    return pool_run(fn, opaque, bg);
}

void pool_background_promote(PoolBackground *bg)
{
    bool wake = false;

    if (atomic_load(&bg->promoted)) {
        return;
    }
    atomic_store(&bg->promoted, true);
    PoolReq *req = bg->req;
    if (!req) {
        return;
    }
    pthread_mutex_lock(&pool_lock);
    if (req->bg_queued) {
        /* Out of the background queue, to the end of the normal one. */
        for (PoolReq **p = &bg_head; *p; p = &(*p)->next) {
            if (*p == req) {
                *p = req->next;
                if (!*p) {
                    bg_tail = p;
                }
                break;
            }
        }
        req->next = NULL;
        req->bg_queued = false;
        wake = enqueue_locked(req);
        atomic_fetch_add(&stat_promoted, 1);
    } else {
        pid_t tid = atomic_load(&req->idle_tid);
        struct sched_param p = { 0 };
        /* The worker may be done with it and on its next call by now:
         * that one runs at normal class then, no worse than without
         * the idle class. */
        if (tid && sched_set(tid, req->normal_policy, &p) == 0) {
            atomic_fetch_add(&stat_promoted, 1);
        }
    }
    pthread_mutex_unlock(&pool_lock);
    if (wake) {
        sem_post(&pool_sem);
    }
}

void pool_background_promote_co(Coroutine *co)
{
    if (!co) {
        return;
    }
    for (PoolBackground *f = bg_frames; f; f = f->next) {
        if (f->co == co) {
            pool_background_promote(f);
        }
    }
    /* What co waits for is waited for now too.  Ends: each wait is
     * boosted once. */
    co_mutex_boost_waiter(co);
}

bool pool_background_unpromoted_here(void)
{
    PoolBackground *f = bg_frames ? current_frame() : NULL;
    return f && !atomic_load(&f->promoted);
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
