/*
 * An IOThread is a thread whose thread-default GMainContext carries its own
 * StrataLoop; bottom halves reach it through loop_bh_remote().  Stopping
 * is a remote BH that clears `running`, so the thread leaves its loop after
 * the work queued before it, and once the pool requests its coroutines
 * wait for have come back.
 *
 * The hand-shakes use pthread's mutex and condition variable: glib's are
 * futexes that ThreadSanitizer cannot see (see util/thread-pool.c).
 */
#include <limits.h>
#include <pthread.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "strata/error.h"
#include "strata/iothread.h"

struct IOThread {
    GThread *thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    StrataLoop *loop;        /* set by the thread once its loop exists */
    int64_t tid;
    bool running;            /* read and written by the thread only */
    bool released;           /* iothread_free() is done with the loop */
    IOThreadParams params;
    /*
     * params.poll_max_ns for the thread itself (nbd/spin.c caps its busy
     * wait by it): qom-set writes it in the main thread, atomically.
     */
    int64_t poll_max_ns;
};

/* The IOThread whose loop this thread runs (NULL in any other thread). */
static __thread IOThread *self;

static void publish_poll_max_ns(IOThread *t)
{
    __atomic_store_n(&t->poll_max_ns, t->params.poll_max_ns, __ATOMIC_RELAXED);
}

int64_t iothread_self_poll_max_ns(void)
{
    return self ? __atomic_load_n(&self->poll_max_ns, __ATOMIC_RELAXED) : -1;
}

void iothread_params_default(IOThreadParams *p)
{
    *p = (IOThreadParams){
        .poll_max_ns = 32768, .poll_grow = 0, .poll_shrink = 0,
        .aio_max_batch = 0, .thread_pool_min = 0, .thread_pool_max = 64,
    };
}

/* The integer properties, in QEMU's order (its range messages come so). */
static const struct { const char *name; size_t off; } param_fields[] = {
    { "poll-max-ns", offsetof(IOThreadParams, poll_max_ns) },
    { "poll-grow", offsetof(IOThreadParams, poll_grow) },
    { "poll-shrink", offsetof(IOThreadParams, poll_shrink) },
    { "aio-max-batch", offsetof(IOThreadParams, aio_max_batch) },
    { "thread-pool-min", offsetof(IOThreadParams, thread_pool_min) },
    { "thread-pool-max", offsetof(IOThreadParams, thread_pool_max) },
};

int64_t *iothread_param_field(IOThreadParams *p, const char *name)
{
    for (size_t i = 0; i < G_N_ELEMENTS(param_fields); i++) {
        if (!strcmp(param_fields[i].name, name)) {
            return (int64_t *)((char *)p + param_fields[i].off);
        }
    }
    return NULL;
}

bool iothread_params_check(const IOThreadParams *p, GError **errp)
{
    for (size_t i = 0; i < G_N_ELEMENTS(param_fields); i++) {
        int64_t v = *(const int64_t *)((const char *)p + param_fields[i].off);
        if (v < 0) {
            error_setg(errp, "%s value must be in range [0, %" G_GINT64_FORMAT
                       "]", param_fields[i].name, (gint64)INT64_MAX);
            return false;
        }
    }
    if (p->thread_pool_min > p->thread_pool_max || !p->thread_pool_max ||
        p->thread_pool_min > INT_MAX || p->thread_pool_max > INT_MAX) {
        error_setg(errp, "bad thread-pool-min/thread-pool-max values");
        return false;
    }
    return true;
}

static void stop_bh(void *opaque)
{
    IOThread *t = opaque;
    t->running = false;
}

static gpointer iothread_run(gpointer opaque)
{
    IOThread *t = opaque;
    GMainContext *ctx = g_main_context_new();

    /* loop_get() takes the thread-default context as the loop's */
    g_main_context_push_thread_default(ctx);
    StrataLoop *loop = loop_get();
    self = t;
    t->running = true;
    pthread_mutex_lock(&t->lock);
    t->tid = syscall(SYS_gettid);
    t->loop = loop;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);

    /*
     * A coroutine of ours may still wait for a pool request when we are
     * told to stop: its worker posts the completion to this loop, which
     * must not be freed under it (nor the coroutine left parked for
     * ever).  Run until those requests are back; the coroutines then
     * finish or wait for something else, whose owner answers for it.
     */
    while (t->running || thread_pool_waiting_here() > 0) {
        loop_iterate(true);
    }
    /* The last worker to post to us may still hold our context. */
    thread_pool_posts_settle();
    /*
     * The thread frees its loop as it exits; iothread_free() may still be
     * inside the loop_bh_remote() that stopped it (found by TSan).
     */
    pthread_mutex_lock(&t->lock);
    while (!t->released) {
        pthread_cond_wait(&t->cond, &t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    g_main_context_pop_thread_default(ctx);
    g_main_context_unref(ctx);
    /* the loop itself is freed with the thread's private data */
    return NULL;
}

IOThread *iothread_new(const char *name, const IOThreadParams *p,
                       GError **errp)
{
    if (!iothread_params_check(p, errp)) {
        return NULL;
    }
    IOThread *t = g_new0(IOThread, 1);
    t->params = *p;
    publish_poll_max_ns(t);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    char *tname = g_strdup_printf("IO %s", name);
    t->thread = g_thread_try_new(tname, iothread_run, t, NULL);
    g_free(tname);
    if (!t->thread) {
        error_setg(errp, "failed to create thread for iothread '%s'", name);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->cond);
        g_free(t);
        return NULL;
    }
    pthread_mutex_lock(&t->lock);
    while (!t->loop) {
        pthread_cond_wait(&t->cond, &t->lock);
    }
    pthread_mutex_unlock(&t->lock);
    return t;
}

void iothread_free(IOThread *t)
{
    if (!t) {
        return;
    }
    loop_bh_remote(t->loop, stop_bh, t);
    pthread_mutex_lock(&t->lock);
    t->released = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    g_thread_join(t->thread);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
    g_free(t);
}

StrataLoop *iothread_loop(IOThread *t)
{
    return t->loop;
}

int64_t iothread_thread_id(const IOThread *t)
{
    return t->tid;
}

const IOThreadParams *iothread_params(const IOThread *t)
{
    return &t->params;
}

bool iothread_set_params(IOThread *t, const IOThreadParams *p, GError **errp)
{
    if (!iothread_params_check(p, errp)) {
        return false;
    }
    t->params = *p;
    publish_poll_max_ns(t);
    return true;
}

void iothread_force_params(IOThread *t, const IOThreadParams *p)
{
    t->params = *p;
    publish_poll_max_ns(t);
}

typedef struct {
    LoopFunc *fn;
    void *opaque;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
} SyncCall;

static void sync_call_bh(void *opaque)
{
    SyncCall *s = opaque;
    s->fn(s->opaque);
    pthread_mutex_lock(&s->lock);
    s->done = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

void iothread_run_sync(IOThread *t, LoopFunc *fn, void *opaque)
{
    SyncCall s = { .fn = fn, .opaque = opaque };
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    loop_bh_remote(t->loop, sync_call_bh, &s);
    pthread_mutex_lock(&s.lock);
    while (!s.done) {
        pthread_cond_wait(&s.cond, &s.lock);
    }
    pthread_mutex_unlock(&s.lock);
    pthread_mutex_destroy(&s.lock);
    pthread_cond_destroy(&s.cond);
}
