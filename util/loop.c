/*
 * StrataLoop: bottom halves and fd watches on top of a GMainContext.
 *
 * Bottom halves are the hot path (every I/O completion wakes a coroutine
 * through one), so they live in plain arrays swapped on dispatch: no
 * allocation per call and one GSource for all of them.
 */
#include <time.h>
#include <glib.h>
#include <glib-unix.h>
#include "strata/loop.h"

typedef struct {
    LoopFunc *fn;
    void *opaque;
} BH;

struct StrataLoop {
    GSource source;          /* must be first: the loop is a GSource */
    GMainContext *ctx;
    GArray *pending;         /* BH, this thread only */
    GArray *running;
    GMutex remote_lock;
    GArray *remote;          /* BH, from other threads */
    volatile gint remote_count;
    int fast_rounds;         /* BH-only iterations since the last poll */
};

static void loop_free(gpointer data);
/* Frees a thread's loop when the thread exits. */
static GPrivate loop_key = G_PRIVATE_INIT(loop_free);

static __thread StrataLoop *thread_loop;

static gboolean loop_prepare(GSource *source, gint *timeout)
{
    StrataLoop *loop = (StrataLoop *)source;
    bool ready = loop->pending->len > 0 || g_atomic_int_get(&loop->remote_count) > 0;
    *timeout = ready ? 0 : -1;
    return ready;
}

static gboolean loop_check(GSource *source)
{
    StrataLoop *loop = (StrataLoop *)source;
    return loop->pending->len > 0 || g_atomic_int_get(&loop->remote_count) > 0;
}

static void loop_run_bhs(StrataLoop *loop)
{
    if (g_atomic_int_get(&loop->remote_count) > 0) {
        g_mutex_lock(&loop->remote_lock);
        g_array_append_vals(loop->pending, loop->remote->data, loop->remote->len);
        g_array_set_size(loop->remote, 0);
        g_atomic_int_set(&loop->remote_count, 0);
        g_mutex_unlock(&loop->remote_lock);
    }
    /* BHs scheduled while these run go to the next dispatch. */
    GArray *run = loop->pending;
    loop->pending = loop->running;
    loop->running = run;
    for (guint i = 0; i < run->len; i++) {
        BH *bh = &g_array_index(run, BH, i);
        bh->fn(bh->opaque);
    }
    g_array_set_size(run, 0);
}

static gboolean loop_dispatch(GSource *source, GSourceFunc cb, gpointer data)
{
    loop_run_bhs((StrataLoop *)source);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs loop_source_funcs = {
    .prepare = loop_prepare,
    .check = loop_check,
    .dispatch = loop_dispatch,
};

StrataLoop *loop_get(void)
{
    if (thread_loop) {
        return thread_loop;
    }
    /*
     * The thread-default context, or glib's global default one: a thread
     * that wants a loop of its own pushes its context before first use.
     */
    GMainContext *ctx = g_main_context_ref_thread_default();
    StrataLoop *loop = (StrataLoop *)g_source_new(&loop_source_funcs,
                                                  sizeof(StrataLoop));
    loop->ctx = ctx;
    loop->pending = g_array_sized_new(FALSE, FALSE, sizeof(BH), 64);
    loop->running = g_array_sized_new(FALSE, FALSE, sizeof(BH), 64);
    loop->remote = g_array_new(FALSE, FALSE, sizeof(BH));
    g_mutex_init(&loop->remote_lock);
    /* BHs run before fd and timer callbacks of the same iteration. */
    g_source_set_priority(&loop->source, G_PRIORITY_HIGH);
    g_source_attach(&loop->source, ctx);
    thread_loop = loop;
    g_private_set(&loop_key, loop);
    return loop;
}

static void loop_free(gpointer data)
{
    StrataLoop *loop = data;
    GMainContext *ctx = loop->ctx;
    thread_loop = NULL;
    g_array_free(loop->pending, TRUE);
    g_array_free(loop->running, TRUE);
    g_array_free(loop->remote, TRUE);
    g_mutex_clear(&loop->remote_lock);
    g_source_destroy(&loop->source);
    g_source_unref(&loop->source);
    g_main_context_unref(ctx);
}

GMainContext *loop_context(StrataLoop *loop)
{
    return loop->ctx;
}

void loop_bh(LoopFunc *fn, void *opaque)
{
    StrataLoop *loop = loop_get();
    BH bh = { fn, opaque };
    g_array_append_val(loop->pending, bh);
}

void loop_bh_remote(StrataLoop *loop, LoopFunc *fn, void *opaque)
{
    BH bh = { fn, opaque };
    g_mutex_lock(&loop->remote_lock);
    g_array_append_val(loop->remote, bh);
    /*
     * Only the first BH of a batch wakes the loop: it takes every queued one
     * when it runs (the count goes back to 0 under the same lock), so later
     * ones ride along and spare an eventfd write each.
     */
    bool wake = g_atomic_int_add(&loop->remote_count, 1) == 0;
    g_mutex_unlock(&loop->remote_lock);
    if (wake) {
        g_main_context_wakeup(loop->ctx);
    }
}

typedef struct {
    LoopFunc *fn;
    void *opaque;
} FdWatch;

static gboolean loop_fd_cb(gint fd, GIOCondition cond, gpointer data)
{
    FdWatch *w = data;
    w->fn(w->opaque);
    return G_SOURCE_CONTINUE;
}

guint loop_add_fd(int fd, LoopFunc *on_readable, void *opaque)
{
    StrataLoop *loop = loop_get();
    FdWatch *w = g_new(FdWatch, 1);
    w->fn = on_readable;
    w->opaque = opaque;
    GSource *src = g_unix_fd_source_new(fd, G_IO_IN | G_IO_ERR | G_IO_HUP);
    /*
     * Without can_recurse glib blocks and unblocks the source around every
     * dispatch, which costs two eventfd writes and a read per completion.
     * Our handlers are safe to re-enter.
     */
    g_source_set_can_recurse(src, TRUE);
    g_source_set_callback(src, (GSourceFunc)(void (*)(void))loop_fd_cb, w, g_free);
    guint id = g_source_attach(src, loop->ctx);
    g_source_unref(src);
    return id;
}

void loop_remove_fd(guint id)
{
    GSource *src = g_main_context_find_source_by_id(loop_get()->ctx, id);
    if (src) {
        g_source_destroy(src);
    }
}

bool loop_iterate(bool blocking)
{
    StrataLoop *loop = loop_get();
    /*
     * Fast path: pending BHs run without a trip through poll().  Every few
     * rounds poll anyway, so that a BH that keeps rescheduling itself
     * cannot starve fd watches and timers.
     */
    if (loop->pending->len > 0 && loop->fast_rounds < 16) {
        loop->fast_rounds++;
        loop_run_bhs(loop);
        return true;
    }
    loop->fast_rounds = 0;
    return g_main_context_iteration(loop->ctx, blocking);
}

int64_t clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
