/*
 * CoQueue, CoMutex, CoRwLock and co_sleep: the only ways a coroutine waits.
 *
 * Waiters are linked through nodes on their own stacks, so waiting never
 * allocates.  Wake-ups go through co_wake() (the loop), never a direct
 * switch, so a coroutine that releases a lock keeps running until it yields
 * and lock hand-over order is FIFO.
 */
#include <glib.h>
#include "strata/coroutine.h"
#include "strata/loop.h"
#include "strata/pool-class.h"

struct CoWaiter {
    Coroutine *co;
    CoWaiter *next;
    bool dequeued;      /* taken off the queue by co_queue_next() */
};

void co_queue_init(CoQueue *q)
{
    q->head = q->tail = NULL;
}

/*
 * GCC 12 cannot see that co_queue_next(), run while we yield, unlinks w
 * before the loop below lets us return, and takes &w in q for a dangling
 * pointer.
 */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
void coroutine_fn co_queue_wait(CoQueue *q)
{
    CoWaiter w = { .co = co_self(), .next = NULL, .dequeued = false };
    g_assert(w.co);
    if (q->tail) {
        q->tail->next = &w;
    } else {
        q->head = &w;
    }
    q->tail = &w;
    /*
     * w stays linked into q until co_queue_next() takes it off.  An entry
     * that is not that wake (a co_wake() left over from an earlier wait, a
     * job's pause or resume) must not end this frame meanwhile: the queue
     * would point into a reused stack, and a CoMutex waiter that queued
     * again wrote its new node over the old one and lost the waiters
     * behind it.  Callers wait here for the queue's own wake-up.
     */
    while (!w.dequeued) {
        co_yield();
    }
}
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

bool co_queue_next(CoQueue *q)
{
    CoWaiter *w = q->head;
    if (!w) {
        return false;
    }
    q->head = w->next;
    if (!q->head) {
        q->tail = NULL;
    }
    w->dequeued = true;
    co_wake(w->co);
    return true;
}

void co_queue_restart_all(CoQueue *q)
{
    while (co_queue_next(q)) {
    }
}

bool co_queue_empty(const CoQueue *q)
{
    return q->head == NULL;
}

void co_mutex_init(CoMutex *m)
{
    m->locked = false;
    m->holder = NULL;
    m->urgent = 0;
    co_queue_init(&m->waiters);
}

/*
 * Priority inheritance for background work (strata/pool-class.h): a
 * coroutine inside an unpromoted background frame may hold a CoMutex
 * while its pool calls run at SCHED_IDLE (qcow2's metadata writes of a
 * stream's copy, under s->lock).  Whoever else queues for that mutex
 * would wait for as long as the idle thread gets no CPU, so it promotes
 * the holder's frames, and so does every hand-over while such a waiter
 * is still queued.  A waiter that is itself unpromoted background work
 * does not: background copies must not promote each other.  If it is
 * promoted while it waits (a guest request started to wait for it), it
 * promotes the holder then (co_mutex_boost_waiter).
 *
 * CoRwLock and bare CoQueues do not do this: a read lock has no one
 * holder to promote, and a queue no holder at all (qcow2's allocation
 * claims promote their owner themselves).
 */
typedef struct CoMutexWait {
    Coroutine *co;
    CoMutex *m;
    bool urgent;                /* counted in m->urgent */
    struct CoMutexWait *next;
} CoMutexWait;

/* The CoMutex waits of this thread's coroutines. */
static __thread CoMutexWait *mutex_waits;

static void mutex_wait_urgent(CoMutexWait *mw)
{
    mw->urgent = true;
    mw->m->urgent++;
    pool_background_promote_co(mw->m->holder);
}

void co_mutex_boost_waiter(Coroutine *co)
{
    for (CoMutexWait *mw = mutex_waits; mw; mw = mw->next) {
        if (mw->co == co && !mw->urgent) {
            /* Also right when co was just handed m and has not run yet
             * (holder == co): co's frames are promoted already, and the
             * record, urgent now, stops the recursion. */
            mutex_wait_urgent(mw);
            return;
        }
    }
}

void coroutine_fn co_mutex_lock(CoMutex *m)
{
    Coroutine *self = co_self();
    g_assert(m->holder != self || !m->locked); /* not recursive */
    if (!m->locked) {
        m->locked = true;
        m->holder = self;
        return;
    }
    CoMutexWait mw = { .co = self, .m = m, .next = mutex_waits };
    mutex_waits = &mw;
    if (!pool_background_unpromoted_here()) {
        mutex_wait_urgent(&mw);
    }
    while (m->locked) {
        co_queue_wait(&m->waiters);
        /*
         * Ownership was handed to us by unlock (locked stays true), so that
         * a coroutine arriving between the wake and our run cannot barge in.
         */
        if (m->holder == self) {
            break;
        }
    }
    for (CoMutexWait **p = &mutex_waits; *p; p = &(*p)->next) {
        if (*p == &mw) {
            *p = mw.next;
            break;
        }
    }
    m->urgent -= mw.urgent;
    if (m->holder != self) {
        m->locked = true;
        m->holder = self;
    }
}

void coroutine_fn co_mutex_unlock(CoMutex *m)
{
    g_assert(m->locked && m->holder == co_self());
    CoWaiter *w = m->waiters.head;
    if (w) {
        /* Hand over directly: FIFO and no barging. */
        m->holder = w->co;
        co_queue_next(&m->waiters);
        /* A background holder next, with someone urgent behind it. */
        if (m->urgent > 0) {
            pool_background_promote_co(m->holder);
        }
    } else {
        m->locked = false;
        m->holder = NULL;
    }
}

void co_rwlock_init(CoRwLock *l)
{
    l->readers = 0;
    l->writer = false;
    l->pending_writers = 0;
    co_queue_init(&l->rqueue);
    co_queue_init(&l->wqueue);
}

void coroutine_fn co_rwlock_rdlock(CoRwLock *l)
{
    /* Readers queue behind waiting writers so writers cannot starve. */
    while (l->writer || l->pending_writers > 0) {
        co_queue_wait(&l->rqueue);
    }
    l->readers++;
}

void coroutine_fn co_rwlock_wrlock(CoRwLock *l)
{
    l->pending_writers++;
    while (l->writer || l->readers > 0) {
        co_queue_wait(&l->wqueue);
    }
    l->pending_writers--;
    l->writer = true;
}

void coroutine_fn co_rwlock_unlock(CoRwLock *l)
{
    if (l->writer) {
        l->writer = false;
    } else {
        g_assert(l->readers > 0);
        l->readers--;
        if (l->readers > 0) {
            return;
        }
    }
    /* Prefer a waiting writer; otherwise let every waiting reader in. */
    if (!co_queue_next(&l->wqueue)) {
        co_queue_restart_all(&l->rqueue);
    }
}

static gboolean co_sleep_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
    g_source_set_ready_time(src, -1);
    return cb(data);
}

static GSourceFuncs co_sleep_funcs = {
    .dispatch = co_sleep_dispatch,
};

typedef struct {
    Coroutine *co;
    bool fired;
} CoSleep;

static gboolean co_sleep_cb(gpointer opaque)
{
    CoSleep *s = opaque;
    s->fired = true;
    co_enter(s->co);
    return G_SOURCE_REMOVE;
}

void coroutine_fn co_sleep_ns(int64_t ns)
{
    CoSleep s = { .co = co_self(), .fired = false };
    g_assert(s.co);
    /* A bare source with a ready time: glib's timeout sources round to ms. */
    GSource *src = g_source_new(&co_sleep_funcs, sizeof(GSource));
    g_source_set_ready_time(src, g_get_monotonic_time() + (ns > 0 ? ns / 1000 : 0));
    g_source_set_callback(src, co_sleep_cb, &s, NULL);
    g_source_attach(src, loop_context(loop_get()));
    g_source_unref(src);
    /*
     * The source holds &s and enters this coroutine when it fires: a
     * stray entry before that must not end the sleep early, or the timer
     * would later enter the coroutine wherever it waits next (or after it
     * has terminated).  A sleep nobody can cut short is what callers
     * (rate limits, null-co's latency) count on.
     */
    while (!s.fired) {
        co_yield();
    }
}
