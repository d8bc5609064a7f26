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
    GArray *pending;         /* BH, this thread only; run from bh_head on */
    guint bh_head;           /* next BH to run */
    int bh_depth;            /* nesting of loop_run_bhs */
    GMutex remote_lock;
    GArray *remote;          /* BH, from other threads */
    volatile gint remote_count;
    int fast_rounds;         /* BH-only iterations since the last poll */
};

static void loop_free(gpointer data);
/* Frees a thread's loop when the thread exits. */
static GPrivate loop_key = G_PRIVATE_INIT(loop_free);

static __thread StrataLoop *thread_loop;

static bool loop_bh_ready(StrataLoop *loop)
{
    return loop->bh_head < loop->pending->len ||
           g_atomic_int_get(&loop->remote_count) > 0;
}

static gboolean loop_prepare(GSource *source, gint *timeout)
{
    bool ready = loop_bh_ready((StrataLoop *)source);
    *timeout = ready ? 0 : -1;
    return ready;
}

static gboolean loop_check(GSource *source)
{
    return loop_bh_ready((StrataLoop *)source);
}

/*
 * Run the BHs queued so far.  One queue with a moving head: a BH that runs
 * the loop itself (a nested wait) continues from the head and never runs a
 * BH twice, and a BH queued meanwhile is seen by prepare().  BHs queued while
 * this batch runs wait for the next batch, so a BH that reschedules itself
 * cannot keep the loop from polling.
 */
static void loop_run_bhs(StrataLoop *loop)
{
    if (g_atomic_int_get(&loop->remote_count) > 0) {
        g_mutex_lock(&loop->remote_lock);
        g_array_append_vals(loop->pending, loop->remote->data, loop->remote->len);
        g_array_set_size(loop->remote, 0);
        g_atomic_int_set(&loop->remote_count, 0);
        g_mutex_unlock(&loop->remote_lock);
    }
    guint end = loop->pending->len;
    loop->bh_depth++;
    while (loop->bh_head < end && loop->bh_head < loop->pending->len) {
        BH bh = g_array_index(loop->pending, BH, loop->bh_head);
        loop->bh_head++;
        bh.fn(bh.opaque);
    }
    loop->bh_depth--;
    if (loop->bh_depth == 0 && loop->bh_head > 0) {
        /* Drop what has run; keep what was queued meanwhile. */
        g_array_remove_range(loop->pending, 0, loop->bh_head);
        loop->bh_head = 0;
    }
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
    loop->remote = g_array_new(FALSE, FALSE, sizeof(BH));
    g_mutex_init(&loop->remote_lock);
    /*
     * Same priority as fd watches and timers, so that both are dispatched
     * in one iteration; recursive, so that a BH may run a nested wait.
     */
    g_source_set_priority(&loop->source, G_PRIORITY_DEFAULT);
    g_source_set_can_recurse(&loop->source, TRUE);
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
    if (loop->bh_head < loop->pending->len && loop->fast_rounds < 16) {
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
