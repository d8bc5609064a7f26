/*
 * Thread pool for work that blocks: pread/pwrite for aio=threads,
 * fallocate, fsync, image creation.  The submitting coroutine yields; the
 * worker hands the result back to the submitter's loop with a remote BH.
 */
#include <glib.h>
#include "strata/coroutine.h"
#include "strata/loop.h"

typedef struct {
    ThreadPoolFunc *fn;
    void *opaque;
    int ret;
    Coroutine *co;
    StrataLoop *loop;
} PoolReq;

static GThreadPool *pool;
static int pool_max = 64;
static GMutex pool_lock;

static void pool_complete_bh(void *opaque)
{
    PoolReq *req = opaque;
    co_enter(req->co);
}

static void pool_worker(gpointer data, gpointer user_data)
{
    PoolReq *req = data;
    req->ret = req->fn(req->opaque);
    loop_bh_remote(req->loop, pool_complete_bh, req);
}

void thread_pool_set_max(int n)
{
    g_mutex_lock(&pool_lock);
    pool_max = n > 0 ? n : 1;
    if (pool) {
        g_thread_pool_set_max_threads(pool, pool_max, NULL);
    }
    g_mutex_unlock(&pool_lock);
}

int thread_pool_co_run(ThreadPoolFunc *fn, void *opaque)
{
    g_assert(in_coroutine());
    g_mutex_lock(&pool_lock);
    if (!pool) {
        pool = g_thread_pool_new(pool_worker, NULL, pool_max, FALSE, NULL);
    }
    g_mutex_unlock(&pool_lock);
    PoolReq req = {
        .fn = fn, .opaque = opaque, .co = co_self(), .loop = loop_get(),
    };
    g_thread_pool_push(pool, &req, NULL);
    co_yield();
    return req.ret;
}
