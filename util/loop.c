/*
 * StrataLoop: bottom halves and fd watches on top of a GMainContext.
 *
 * Bottom halves are the hot path (every I/O completion wakes a coroutine
 * through one), so they live in plain arrays swapped on dispatch: no
 * allocation per call and one GSource for all of them.
 */
#include <time.h>
#include <unistd.h>
#include <glib.h>
#include <glib-unix.h>
#include "strata/loop.h"

typedef struct {
    LoopFunc *fn;
    void *opaque;
} BH;

typedef struct RemoteBH {
    LoopFunc *fn;
    void *opaque;
    struct RemoteBH *next;
} RemoteBH;

struct StrataLoop {
    GSource source;          /* must be first: the loop is a GSource */
    GMainContext *ctx;
    GArray *pending;         /* BH, this thread only; run from bh_head on */
    guint bh_head;           /* next BH to run */
    int bh_depth;            /* nesting of loop_run_bhs */
    /*
     * BHs from other threads: a lock-free stack (newest first).  Worker
     * threads completing requests all push here at once; a mutex made them
     * queue up on futexes (measured: ~10 futex calls per request at 32 in
     * flight).
     */
    gpointer remote_head;
    int fast_rounds;         /* BH-only iterations since the last poll */
};

static void loop_free(gpointer data);
/* Frees a thread's own loop when the thread exits. */
static GPrivate loop_key = G_PRIVATE_INIT(loop_free);

/* The calling thread's own loop: the main one in the main thread. */
static __thread StrataLoop *thread_loop;
/*
 * The loop on glib's global default context, which the main thread runs.
 * Made once, by whichever thread asks first, and never freed (as the
 * default context itself).
 */
static StrataLoop *main_loop;

static bool loop_bh_ready(StrataLoop *loop)
{
    return loop->bh_head < loop->pending->len ||
           g_atomic_pointer_get(&loop->remote_head) != NULL;
}

/* Rounds through the thread's context (loop_poll_count). */
static __thread uint64_t poll_rounds;

uint64_t loop_poll_count(void)
{
    return poll_rounds;
}

static gboolean loop_prepare(GSource *source, gint *timeout)
{
    poll_rounds++;
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
    RemoteBH *list = g_atomic_pointer_exchange(&loop->remote_head, NULL);
    if (list) {
        /* The stack is newest first: reverse it to run in posting order. */
        RemoteBH *fifo = NULL;
        while (list) {
            RemoteBH *next = list->next;
            list->next = fifo;
            fifo = list;
            list = next;
        }
        while (fifo) {
            RemoteBH *next = fifo->next;
            BH bh = { fifo->fn, fifo->opaque };
            g_array_append_val(loop->pending, bh);
            g_free(fifo);
            fifo = next;
        }
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

static StrataLoop *loop_new(GMainContext *ctx)
{
    StrataLoop *loop = (StrataLoop *)g_source_new(&loop_source_funcs,
                                                  sizeof(StrataLoop));
    loop->ctx = g_main_context_ref(ctx);
    loop->pending = g_array_sized_new(FALSE, FALSE, sizeof(BH), 64);
    /*
     * Same priority as fd watches and timers, so that both are dispatched
     * in one iteration; recursive, so that a BH may run a nested wait.
     */
    g_source_set_priority(&loop->source, G_PRIORITY_DEFAULT);
    g_source_set_can_recurse(&loop->source, TRUE);
    g_source_attach(&loop->source, ctx);
    return loop;
}

StrataLoop *loop_main(void)
{
    static gsize made;
    if (g_once_init_enter(&made)) {
        g_atomic_pointer_set(&main_loop, loop_new(g_main_context_default()));
        g_once_init_leave(&made, 1);
    }
    return g_atomic_pointer_get(&main_loop);
}

/* The process's first thread, the one that runs glib's default context. */
bool loop_in_main_thread(void)
{
    return gettid() == getpid();
}

StrataLoop *loop_get(void)
{
    if (thread_loop) {
        return thread_loop;
    }
    /*
     * A thread that wants a loop of its own (an iothread) pushes its
     * context before first use.  Any other thread is served by the main
     * loop: a pool worker or a migration thread that posts a BH or asks
     * for a context to attach to gets the main thread's.  It used to get a
     * second loop on the default context, which two threads then
     * dispatched, which replaced the main loop as loop_main() and which
     * was freed, with the BHs posted to it, when the thread exited.
     */
    GMainContext *ctx = g_main_context_get_thread_default();
    if (!ctx || ctx == g_main_context_default()) {
        StrataLoop *loop = loop_main();
        if (loop_in_main_thread()) {
            thread_loop = loop;
        }
        return loop;
    }
    StrataLoop *loop = loop_new(ctx);
    thread_loop = loop;
    g_private_set(&loop_key, loop);
    return loop;
}

/* Whether loop is the calling thread's own (it runs its BHs and polls). */
static bool loop_is_mine(StrataLoop *loop)
{
    return loop == thread_loop;
}

static void loop_free(gpointer data)
{
    StrataLoop *loop = data;
    GMainContext *ctx = loop->ctx;
    thread_loop = NULL;
    g_array_free(loop->pending, TRUE);
    RemoteBH *r = g_atomic_pointer_exchange(&loop->remote_head, NULL);
    while (r) {
        RemoteBH *next = r->next;
        g_free(r);
        r = next;
    }
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
    if (!loop_is_mine(loop)) {
        /* A thread without a loop of its own: the main thread runs it. */
        loop_bh_remote(loop, fn, opaque);
        return;
    }
    BH bh = { fn, opaque };
    g_array_append_val(loop->pending, bh);
}

void loop_bh_remote(StrataLoop *loop, LoopFunc *fn, void *opaque)
{
    RemoteBH *r = g_new(RemoteBH, 1);
    r->fn = fn;
    r->opaque = opaque;
    /*
     * Once pushed, the BH may run and its loop's thread may exit and free
     * the loop (an iothread's stop BH does that) before this thread
     * wakes it: from the push on, only the context is used, held by
     * a reference of our own.
     */
    GMainContext *ctx = g_main_context_ref(loop->ctx);
    gpointer old;
    do {
        old = g_atomic_pointer_get(&loop->remote_head);
        r->next = old;
    } while (!g_atomic_pointer_compare_and_exchange(&loop->remote_head, old, r));
    /*
     * Only a push onto an empty stack wakes the loop: the loop takes the
     * whole stack when it runs, and sees a non-empty one in prepare().
     */
    if (old == NULL) {
        g_main_context_wakeup(ctx);
    }
    g_main_context_unref(ctx);
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
    if (!loop_is_mine(loop)) {
        /* Two threads would take turns dispatching the main context. */
        g_error("loop_iterate() in a thread without an event loop of its "
                "own: push a GMainContext as the thread's default first");
    }
    /*
     * Fast path: pending BHs run without a trip through poll().  Every few
     * rounds poll anyway, so that a BH that keeps rescheduling itself
     * cannot starve fd watches and timers.
     */
    if (loop_bh_ready(loop) && loop->fast_rounds < 16) {
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
