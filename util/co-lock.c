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

struct CoWaiter {
    Coroutine *co;
    CoWaiter *next;
};

void co_queue_init(CoQueue *q)
{
    q->head = q->tail = NULL;
}

void coroutine_fn co_queue_wait(CoQueue *q)
{
    CoWaiter w = { .co = co_self(), .next = NULL };
    g_assert(w.co);
    if (q->tail) {
        q->tail->next = &w;
    } else {
        q->head = &w;
    }
    q->tail = &w;
    co_yield();
}

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
    co_queue_init(&m->waiters);
}

void coroutine_fn co_mutex_lock(CoMutex *m)
{
    Coroutine *self = co_self();
    g_assert(m->holder != self || !m->locked); /* not recursive */
    while (m->locked) {
        co_queue_wait(&m->waiters);
        /*
         * Ownership was handed to us by unlock (locked stays true), so that
         * a coroutine arriving between the wake and our run cannot barge in.
         */
        if (m->holder == self) {
            return;
        }
    }
    m->locked = true;
    m->holder = self;
}

void coroutine_fn co_mutex_unlock(CoMutex *m)
{
    g_assert(m->locked && m->holder == co_self());
    CoWaiter *w = m->waiters.head;
    if (w) {
        /* Hand over directly: FIFO and no barging. */
        m->holder = w->co;
        co_queue_next(&m->waiters);
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

static gboolean co_sleep_cb(gpointer opaque)
{
    co_enter(opaque);
    return G_SOURCE_REMOVE;
}

void coroutine_fn co_sleep_ns(int64_t ns)
{
    Coroutine *self = co_self();
    g_assert(self);
    /* A bare source with a ready time: glib's timeout sources round to ms. */
    GSource *src = g_source_new(&co_sleep_funcs, sizeof(GSource));
    g_source_set_ready_time(src, g_get_monotonic_time() + (ns > 0 ? ns / 1000 : 0));
    g_source_set_callback(src, co_sleep_cb, self, NULL);
    g_source_attach(src, loop_context(loop_get()));
    g_source_unref(src);
    co_yield();
}
