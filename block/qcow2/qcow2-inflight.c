/*
 * qcow2 allocations in flight: the guest ranges whose clusters a write is
 * filling with s->lock released (qcow2-write.c), and the waits of what
 * must not touch their metadata meanwhile.
 */
#include "qcow2-write-int.h"
#include "strata/pool-class.h"

/*
 * Allocations in flight: guest cluster ranges whose new clusters are being
 * written with the lock released.  Anything else that would change or
 * depend on the metadata of such a range waits until it is done.
 */
struct Qcow2Inflight {
    uint64_t start, end;       /* guest bytes, whole clusters */
    bool shared;               /* an in-place write: other writes may run */
    CoQueue waiters;
    Coroutine *owner;          /* whose data write it waits for */
};

static Qcow2Inflight *find_inflight(Qcow2State *s, uint64_t start,
                                    uint64_t end, bool include_shared)
{
    for (GList *l = s->inflight; l; l = l->next) {
        Qcow2Inflight *f = l->data;
        if (f->start < end && start < f->end &&
            (include_shared || !f->shared)) {
            return f;
        }
    }
    return NULL;
}

Qcow2Inflight *qcow2_claim(Qcow2State *s, uint64_t start, uint64_t end,
                           bool shared)
{
    Qcow2Inflight *f = g_new0(Qcow2Inflight, 1);

    f->start = qcow2_start_of_cluster(s, start);
    f->end = ROUND_UP(end, s->cluster_size);
    f->shared = shared;
    f->owner = co_self();
    co_queue_init(&f->waiters);
    s->inflight = g_list_prepend(s->inflight, f);
    return f;
}

void qcow2_release_claim(Qcow2State *s, Qcow2Inflight *f)
{
    s->inflight = g_list_remove(s->inflight, f);
    co_queue_restart_all(&f->waiters);
    g_free(f);
}

bool coroutine_fn qcow2_wait_claims(BlockNode *bs, uint64_t start,
                                   uint64_t end, bool include_shared)
{
    Qcow2State *s = bs->opaque;
    bool waited = false;
    Qcow2Inflight *f;

    start = qcow2_start_of_cluster(s, start);
    end = end > UINT64_MAX - s->cluster_size ? UINT64_MAX
                                             : ROUND_UP(end, s->cluster_size);
    while ((f = find_inflight(s, start, end, include_shared))) {
        /*
         * The owner's data write may be a background copy's, at idle
         * class (a stream's copy-on-read): promote it, unless we are
         * unpromoted background work too (strata/pool-class.h).
         */
        if (!pool_background_unpromoted_here()) {
            pool_background_promote_co(f->owner);
        }
        /* Unlock and queue without yielding in between: no lost wake-up. */
        co_mutex_unlock(&s->lock);
        co_queue_wait(&f->waiters);
        co_mutex_lock(&s->lock);
        waited = true;
    }
    return waited;
}

/*
 * Lock held on entry and on return; true if it had to wait.  Waits for
 * every claim, in-place writes included: what frees or shares clusters
 * (discards, zero writes, snapshots, resize) must not race their data.
 */
bool coroutine_fn qcow2_wait_inflight(BlockNode *bs, uint64_t start,
                                      uint64_t end)
{
    return qcow2_wait_claims(bs, start, end, true);
}
