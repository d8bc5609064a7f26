/*
 * The work queue of a save's or restore's page channels (mr-internal.h),
 * shared by the one-pass save and restore (channels.c) and the passes of
 * a live save (live-save.c).
 */
#include "strata/loop.h"
#include "mr-internal.h"

void mr_queue_init(MrQueue *q, const MrBlock *blocks, unsigned nb,
                   unsigned long *const *work, uint64_t batch,
                   atomic_bool *cancel, uint64_t max_bandwidth)
{
    memset(q, 0, sizeof(*q));
    q->batch = batch;
    q->cancel = cancel;
    q->max_bandwidth = max_bandwidth;
    q->nb = nb;
    q->first = g_new0(uint64_t, nb + 1);
    for (unsigned i = 0; i < nb; i++) {
        uint64_t n = work[i] ? (mr_block_pages(&blocks[i]) + batch - 1) /
                               batch : 0;
        q->first[i + 1] = q->first[i] + n;
    }
    q->pages = g_new0(uint64_t, nb);
    for (unsigned i = 0; i < nb; i++) {
        q->pages[i] = mr_block_pages(&blocks[i]);
    }
    g_mutex_init(&q->lock);
    q->rate_start = clock_ns();
}

bool mr_queue_next(MrQueue *q, unsigned *bi, uint64_t *s, uint64_t *e)
{
    uint64_t n = atomic_fetch_add(&q->next, 1);
    unsigned i = 0;

    if (n >= q->first[q->nb] || atomic_load(&q->failed)) {
        return false;
    }
    if (atomic_load(q->cancel)) {
        GError *err = NULL;
        error_setg(&err, "Migration was cancelled");
        mr_queue_fail(q, err);
        return false;
    }
    while (q->first[i + 1] <= n) {
        i++;
    }
    *bi = i;
    *s = (n - q->first[i]) * q->batch;
    *e = MIN(*s + q->batch, q->pages[i]);
    return true;
}

void mr_queue_fail(MrQueue *q, GError *err)
{
    g_mutex_lock(&q->lock);
    if (!q->err) {
        q->err = err;
    } else {
        g_error_free(err);
    }
    g_mutex_unlock(&q->lock);
    atomic_store(&q->failed, true);
}

void mr_queue_throttle(MrQueue *q, uint64_t bytes)
{
    uint64_t bw = q->max_bandwidth;
    int64_t due;

    if (!bw) {
        return;
    }
    g_mutex_lock(&q->lock);
    q->rate_bytes += bytes;
    due = q->rate_start + (int64_t)(q->rate_bytes * 1000000000.0 / bw);
    g_mutex_unlock(&q->lock);
    int64_t now = clock_ns();
    if (due > now) {
        g_usleep((gulong)((due - now) / 1000));
    }
}

bool mr_queue_finish(MrQueue *q, GError **errp)
{
    bool ok = !q->err;

    if (q->err) {
        g_propagate_error(errp, q->err);
        q->err = NULL;
    }
    g_free(q->first);
    g_free(q->pages);
    g_mutex_clear(&q->lock);
    return ok;
}
