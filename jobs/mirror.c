/*
 * The mirror job and active commit (strata/mirror.h), QEMU 7.2's
 * block/mirror.c rebuilt on the copy engine (strata/block-copy.h).
 *
 * Shape of a run: a mirror_top filter goes above the source; a recording
 * dirty bitmap on the source (below the filter) is marked by every write
 * that reaches it (block/io.c marks after the write, so a range the engine
 * takes before the write lands is marked again and copied again); the
 * engine copies what the bitmap holds until it is clean, then the job is
 * ready and goes on copying what guests write until job-complete or a
 * soft cancel.  Then, with the source drained and the bitmap clean, the
 * target is flushed and (complete) takes the source's place.
 *
 * Write-blocking copy mode hooks the filter's writes: the write goes to
 * the source, then the same data to the target before the guest hears
 * back.  The engine may have a chunk of that range in flight, read before
 * the write landed: its bits are marked again by the source write, so a
 * copy of stale data is always followed by a fresh one.  The active write
 * clears the bits of the chunks it covers whole only when no engine chunk
 * over its range finished while it ran (the engine's progress callback
 * tells), so that a stale chunk landing after the active write keeps its
 * range dirty.
 */
#include <errno.h>
#include <string.h>

#include "strata/bitmap-pivot.h"
#include "discard-source.h"
#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/blockjob.h"
#include "strata/dirty-bitmap.h"
#include "strata/error.h"
#include "strata/iov.h"
#include "strata/mirror-top.h"
#include "strata/mirror.h"
#include "strata/op-blockers.h"
#include "strata/units.h"
#include "mirror-int.h"

/* QEMU's: 16 requests of 1 MiB. */
#define MIRROR_MAX_IN_FLIGHT 16
#define MIRROR_MAX_IO_BYTES (1024 * 1024)
#define MIRROR_DEFAULT_BUF_SIZE (MIRROR_MAX_IN_FLIGHT * MIRROR_MAX_IO_BYTES)
/* How long a ready job sleeps between looks at the bitmap (QEMU's slice). */
#define MIRROR_SLICE_NS (100 * 1000 * 1000LL)

typedef struct ActiveWrite {
    int64_t offset, bytes;
    bool raced;              /* an engine chunk over it finished meanwhile */
} ActiveWrite;

/* ---- Errors ---- */

static BlockErrorAction mirror_error_action(MirrorJob *s, bool is_read,
                                            int error)
{
    return block_job_error_action(&s->common,
                                  is_read ? s->on_source_error
                                          : s->on_target_error,
                                  is_read, error);
}

/* ---- The engine's view ---- */

/*
 * What the source holds at a range (the whole chain as the guest sees it):
 * data is copied, the rest reads zeroes.
 */
/*
 * x-strata-skip-identical (active commit): of the data range at offset,
 * the leading granules the base already holds byte for byte need no
 * write (SKIP), the leading ones that differ are copied (DATA).  Costs a
 * read of both sides; looks at most 1 MiB ahead.
 */
static int coroutine_fn mirror_classify_identical(MirrorJob *s,
                                                  int64_t offset,
                                                  int64_t *pnum)
{
    int64_t g = s->copy_granularity;
    int64_t n = MIN(*pnum, (int64_t)(1 * MiB));
    if (n > g) {
        n -= n % g;
    }
    uint8_t *a = g_malloc(n), *b = g_malloc(n);
    int ret = child_co_pread(s->source_edge, offset, n, a, 0);
    if (ret >= 0) {
        ret = child_co_pread(s->target_edge, offset, n, b, 0);
    }
    if (ret < 0) {
        g_free(a);
        g_free(b);
        return ret;
    }
    bool first_same = memcmp(a, b, MIN(g, n)) == 0;
    int64_t len = 0;
    while (len < n) {
        int64_t step = MIN(g, n - len);
        if ((memcmp(a + len, b + len, step) == 0) != first_same) {
            break;
        }
        len += step;
    }
    g_free(a);
    g_free(b);
    *pnum = len;
    return first_same ? BLOCK_COPY_SKIP : BLOCK_COPY_DATA;
}

/*
 * QEMU's choice between copying and zeroing (mirror_iteration()): a range
 * the source reads as zeroes is zeroed only when it is at least one
 * granule and covers whole target clusters; anything else is copied,
 * zeroes included, so that the target allocates whole clusters as the
 * source's data would (a partial cluster written as zeroes could stay a
 * zero cluster where QEMU's target holds data).  With whole-cluster
 * copies (copy_granularity above the job's granularity) a copy reaches to
 * the end of its last target cluster, as QEMU's mirror_cow_align().
 */
static int mirror_qemu_method(MirrorJob *s, int64_t offset, int64_t bytes,
                              bool data, int64_t *pnum)
{
    int64_t g = s->granularity;
    int64_t c = s->target_cluster;
    int64_t n = *pnum - *pnum % g;
    bool copy = data;

    if (n < g) {
        n = g;
        copy = true;
    } else if (!copy && c && (offset % c || (offset + n) % c)) {
        copy = true;
    }
    if (copy && s->copy_granularity > g) {
        int64_t cg = s->copy_granularity;
        n = (offset + n + cg - 1) / cg * cg - offset;
    }
    *pnum = MIN(n, bytes);
    return copy ? BLOCK_COPY_DATA : BLOCK_COPY_ZERO;
}

static int coroutine_fn mirror_classify(void *opaque, int64_t offset,
                                        int64_t bytes, int64_t *pnum)
{
    MirrorJob *s = opaque;
    int ret = node_co_block_status_above(s->source, NULL, false, true,
                                         offset, bytes, pnum, NULL, NULL,
                                         NULL);
    if (ret < 0) {
        return ret;
    }
    if (*pnum <= 0 || *pnum > bytes) {
        *pnum = bytes;
    }
    if ((ret & BLOCK_DATA) && s->is_commit && s->x.skip_identical) {
        return mirror_classify_identical(s, offset, pnum);
    }
    if (mirror_qemu_method(s, offset, bytes, ret & BLOCK_DATA, pnum) ==
        BLOCK_COPY_DATA) {
        return BLOCK_COPY_DATA;
    }
    /*
     * QEMU zeroes at most one of its iterations (buf-size) at a time and
     * charges the speed limit with it: a job limited to a speed gets as
     * far as QEMU's before it first sleeps (QEMU 218: cancelled at 64 KiB
     * of a zero source at 64 KiB/s).
     */
    *pnum = MIN(*pnum, s->buf_size);
    return BLOCK_COPY_ZERO;
}

static void mirror_progress(void *opaque, int64_t offset, int64_t bytes,
                            BlockCopyKind kind)
{
    MirrorJob *s = opaque;

    if (s->punch) {
        /*
         * Copied or zeroed in the base, or found there byte for byte
         * (x-strata-skip-identical): the overlays' clusters may go.
         */
        if (kind == BLOCK_COPY_SKIP) {
            s->punch_skipped = true;
        }
        int64_t *last = s->punch->len ?
            &g_array_index(s->punch, int64_t, s->punch->len - 2) : NULL;
        if (last && last[0] + last[1] == offset) {
            last[1] += bytes;
        } else {
            int64_t r[2] = { offset, bytes };
            g_array_append_vals(s->punch, r, 2);
        }
    }
    for (guint i = 0; i < s->active->len; i++) {
        ActiveWrite *w = s->active->pdata[i];
        if (offset < w->offset + w->bytes && w->offset < offset + bytes) {
            w->raced = true;
        }
    }
    job_progress_update(&s->common.job, (uint64_t)bytes);
}

static void mirror_update_remaining(MirrorJob *s)
{
    job_progress_set_remaining(&s->common.job,
                               (uint64_t)block_copy_remaining(s->bcs));
}

/* ---- Write-blocking: guest writes go to the target too ---- */

static int coroutine_fn mirror_target_write(MirrorJob *s, MirrorTopOp op,
                                            int64_t offset, int64_t bytes,
                                            IOVec *qiov, size_t qiov_offset,
                                            int flags)
{
    switch (op) {
    case MIRROR_TOP_WRITE:
        return child_co_pwritev(s->target_edge, offset, bytes, qiov,
                                qiov_offset, flags & REQ_FUA);
    case MIRROR_TOP_ZERO:
        return child_co_pwrite_zeroes(s->target_edge, offset, bytes,
                                      flags & (REQ_FUA | REQ_MAY_UNMAP));
    case MIRROR_TOP_DISCARD:
        return child_co_pdiscard(s->target_edge, offset, bytes);
    }
    return -EINVAL;
}

static int coroutine_fn mirror_write_hook(void *opaque, BlockNode *filter,
                                          MirrorTopOp op, int64_t offset,
                                          int64_t bytes, IOVec *qiov,
                                          size_t qiov_offset, int flags)
{
    MirrorJob *s = opaque;

    if (!s->copying || s->copy_mode != MIRROR_COPY_WRITE_BLOCKING ||
        job_is_cancelled(&s->common.job)) {
        return mirror_top_write_through(filter, op, offset, bytes, qiov,
                                        qiov_offset, flags);
    }

    /*
     * The guest may change its buffer while we write it twice: both sides
     * must get the same bytes, so write from a copy.
     */
    void *bounce = NULL;
    IOVec bq;
    if (op == MIRROR_TOP_WRITE) {
        bounce = g_malloc(bytes);
        iov_to_buf(qiov->iov, qiov->niov, qiov_offset, bounce, bytes);
        iovec_init_buf(&bq, bounce, bytes);
        qiov = &bq;
        qiov_offset = 0;
    }

    ActiveWrite w = { .offset = offset, .bytes = bytes };
    s->active_count++;
    block_copy_wait_range(s->bcs, offset, bytes);
    /* Chunks that finished while we waited copied data older than ours and
     * landed before it: they do not count. */
    w.raced = false;
    g_ptr_array_add(s->active, &w);

    int ret = mirror_top_write_through(filter, op, offset, bytes, qiov,
                                       qiov_offset, flags);
    if (ret >= 0) {
        job_progress_increase_remaining(&s->common.job, (uint64_t)bytes);
        int tret = mirror_target_write(s, op, offset, bytes, qiov,
                                       qiov_offset, flags);
        block_copy_wait_range(s->bcs, offset, bytes);
        if (tret < 0) {
            /* The range stays dirty (the source write marked it). */
            BlockErrorAction a = mirror_error_action(s, false, -tret);
            if (a == BLOCK_ERROR_ACTION_REPORT && !s->write_ret) {
                s->write_ret = tret;
                job_enter(&s->common.job);
            }
        } else {
            if (!w.raced) {
                int64_t g = s->copy_granularity;
                int64_t start = (offset + g - 1) / g * g;
                int64_t end = (offset + bytes) / g * g;
                if (offset + bytes == s->length) {
                    end = offset + bytes;
                }
                if (start < end) {
                    block_copy_reset_dirty(s->bcs, start, end - start);
                }
            }
            job_progress_update(&s->common.job, (uint64_t)bytes);
        }
        s->active_written += (uint64_t)bytes;
    }
    g_ptr_array_remove_fast(s->active, &w);
    s->active_count--;
    co_queue_restart_all(&s->active_done);
    if (bounce) {
        iovec_destroy(&bq);
        g_free(bounce);
    }
    return ret;
}

/* ---- The run ---- */

/* Mark what there is to copy at the start (sync full and top). */
static int coroutine_fn mirror_dirty_init(MirrorJob *s)
{
    if (s->zero_target) {
        BlockNode *t = child_node(s->target_edge);
        if (!node_can_write_zeroes_with_unmap(t)) {
            /* Everything: ranges the source reads as zeroes are zeroed. */
            block_copy_set_dirty(s->bcs, 0, s->length);
            return 0;
        }
        /*
         * Cheap zeroes: zero the whole target first, then copy only what
         * the source has allocated.  As in QEMU, the zeroing is not
         * progress (the job's len counts the allocated data only).
         */
        int64_t g = s->copy_granularity;
        int64_t chunk = ((int64_t)1 << 30) / g * g;
        for (int64_t offset = 0; offset < s->length; offset += chunk) {
            job_pause_point(&s->common.job);
            if (job_is_cancelled(&s->common.job)) {
                return 0;
            }
            int64_t n = MIN(chunk, s->length - offset);
            int ret = child_co_pwrite_zeroes(s->target_edge, offset, n,
                                             s->unmap ? REQ_MAY_UNMAP : 0);
            if (ret < 0) {
                /* As a failed copy: the policy, and the range is copied
                 * later (zeroed where the source reads zeroes). */
                if (mirror_error_action(s, false, -ret) ==
                    BLOCK_ERROR_ACTION_REPORT) {
                    return ret;
                }
                block_copy_set_dirty(s->bcs, offset, n);
            }
        }
    }
    BlockNode *base = s->sync == MIRROR_SYNC_TOP ? s->base : NULL;
    int64_t offset = 0;
    while (offset < s->length) {
        int64_t n = 0;
        int64_t bytes = MIN(s->length - offset, (int64_t)1 << 30);

        job_pause_point(&s->common.job);
        if (job_is_cancelled(&s->common.job)) {
            return 0;
        }
        int ret = node_co_is_allocated_above(s->source, base, false, offset,
                                             bytes, &n);
        if (ret < 0) {
            return ret;
        }
        if (n <= 0) {
            n = bytes;
        }
        if (ret > 0) {
            block_copy_set_dirty(s->bcs, offset, n);
        }
        offset += n;
    }
    return 0;
}

/* Bytes the job has written to the target so far. */
static uint64_t mirror_written(MirrorJob *s)
{
    BlockCopyStats st;

    block_copy_get_stats(s->bcs, &st);
    return st.bytes_written + st.bytes_zeroed + st.bytes_offloaded +
           s->active_written;
}

/*
 * Flush the target; an error goes through the target's policy.  Nothing
 * written since the last flush: nothing to do (QEMU skips such a flush
 * too, which decides whether the job waits before it is ready).
 */
static int coroutine_fn mirror_flush(MirrorJob *s)
{
    uint64_t written = mirror_written(s);
    if (written == s->flushed_written) {
        return 0;
    }
    int ret = node_co_flush(s->target);
    if (ret >= 0) {
        s->flushed_written = written;
    }
    if (ret < 0 &&
        mirror_error_action(s, false, -ret) == BLOCK_ERROR_ACTION_REPORT) {
        s->write_ret = ret;
    }
    return ret;
}

/*
 * x-strata-discard-source: the ranges now in the base leave the top and
 * the images between it and the base, so that reads fall through to the
 * base.  What the guest reads (the chain from the top) must be its data at
 * every instant, in memory and on disk, whenever the daemon is killed:
 *
 * 1. The base is flushed first: it then durably holds, for each byte b of
 *    the ranges, what the chain read at b when the range was copied (or
 *    compared, for a range x-strata-skip-identical found there already).
 * 2. An image L gives up b only where every image between L and the base
 *    is unallocated at b (checked just before, in memory).  Then either an
 *    image above L is allocated at b, and what the guest reads does not
 *    change; or L is what the guest reads at b, and reads fall through to
 *    the base, which holds the same: nobody writes the images below the
 *    top but this, which keeps the reads as they are, and the top gains
 *    clusters only from the guest (its writes mark the bitmap) and loses
 *    them only here, after everything below it at b is gone; so L is what
 *    the chain read at b when the range was copied, and the base got it.
 *    This needs the images to go bottom first: dropping an upper image
 *    first would expose the stale data of a lower one at b.
 * 3. The top goes last, under the same condition, and only where the
 *    bitmap says the guest has not written since the copy
 *    (child_co_unallocate checks that serialised with the guest's writes
 *    to the top; such a range is copied again and comes back here).
 * 4. Each intermediate image is flushed after its turn and before the
 *    next image up starts: a crash then finds on disk a state that step 2
 *    allowed (an upper image's drop never reaches the file before the
 *    lower ones it relied on).  The top needs no flush of its own: a drop
 *    of the top lost in a crash leaves the guest's data in the top.
 *
 * A range a guest writes again stays allocated in the top (its clusters
 * carry the new data); in the images below, it is dropped as everywhere
 * else.
 */

/*
 * Drop [off, off + n) from c's node but where unless_dirty marks it.  The
 * guest may dirty part of a range again between its copy and its punch:
 * that part is copied again and comes back to the punch list, but the
 * clean parts around it, merged with it into one range, would not (the
 * top kept clusters after the job, seen under load).
 */
static int coroutine_fn mirror_punch_clean(BlockChild *c, int64_t off,
                                           int64_t n,
                                           const DirtyBitmap *unless_dirty)
{
    int64_t end = off + n;

    while (off < end) {
        int64_t stop = end;
        if (unless_dirty) {
            int64_t d = dirty_bitmap_next_dirty(unless_dirty, off, end - off);
            if (d == off) {
                int64_t clean = dirty_bitmap_next_clean(unless_dirty, off,
                                                        end - off);
                off = clean < 0 ? end : clean;
                continue;
            }
            if (d > off) {
                stop = d;
            }
        }
        int ret = child_co_unallocate(c, off, stop - off, unless_dirty);
        if (ret == -EAGAIN) {
            /* Dirtied while it waited for the writes in flight: look again. */
            continue;
        }
        if (ret < 0) {
            return ret;
        }
        off = stop;
    }
    return 0;
}

static int coroutine_fn mirror_punch_layer(MirrorJob *s, BlockChild *c,
                                           int64_t off, int64_t len,
                                           const DirtyBitmap *unless_dirty)
{
    BlockNode *bs = child_node(c);
    BlockNode *below = mirror_filter_or_cow(bs);
    int64_t end = off + len;

    while (off < end) {
        int64_t n = end - off;
        /*
         * Where bs holds nothing there is nothing to drop: no request, and
         * no write that would make the next flush of bs sync its file.
         */
        int ret = node_co_is_allocated(bs, off, n, &n);
        if (ret < 0) {
            return ret;
        }
        if (n <= 0) {
            n = end - off;
        }
        if (ret > 0 && below != s->base) {
            ret = node_co_is_allocated_above(below, s->base, false, off, n,
                                             &n);
            if (ret < 0) {
                return ret;
            }
            if (n <= 0) {
                n = end - off;
            }
            /* Allocated below: bs keeps the range (step 2). */
            ret = !ret;
        }
        if (ret > 0) {
            ret = mirror_punch_clean(c, off, n, unless_dirty);
            if (ret < 0) {
                return ret;
            }
        }
        off += n;
    }
    return 0;
}

static int coroutine_fn mirror_punch(MirrorJob *s, GError **errp)
{
    if (!s->punch || s->punch->len == 0) {
        return 0;
    }
    if (mirror_flush(s) < 0) {
        /* The flush error goes its way; the ranges wait for the next one. */
        return 0;
    }
    if (s->punch_skipped) {
        /* The base's copy of a skipped range may not be on disk yet
         * (nothing the job wrote made mirror_flush() flush). */
        int fret = node_co_flush(s->target);
        if (fret < 0) {
            if (mirror_error_action(s, false, -fret) ==
                BLOCK_ERROR_ACTION_REPORT) {
                s->write_ret = fret;
            }
            return 0;
        }
        s->punch_skipped = false;
    }
    GArray *ranges = s->punch;
    s->punch = g_array_new(false, false, sizeof(int64_t));
    int ret = 0;
    BlockChild *c = NULL;
    guint nlayers = s->punch_below ? s->punch_below->len : 0;

    for (guint l = 0; l <= nlayers && ret >= 0; l++) {
        bool top = l == nlayers;
        c = top ? s->punch_edge : g_ptr_array_index(s->punch_below, l);
        for (guint i = 0; i + 1 < ranges->len && ret >= 0; i += 2) {
            ret = mirror_punch_layer(s, c, g_array_index(ranges, int64_t, i),
                                     g_array_index(ranges, int64_t, i + 1),
                                     top ? s->bitmap : NULL);
        }
        if (ret >= 0 && !top) {
            ret = node_co_flush(child_node(c));
        }
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not discard the committed "
                         "data from '%s'", node_get_name(child_node(c)));
    }
    g_array_free(ranges, true);
    return ret;
}

static bool mirror_wants_to_finish(MirrorJob *s)
{
    return s->should_complete || job_cancel_requested(&s->common.job);
}

static int coroutine_fn mirror_run(Job *job, GError **errp)
{
    MirrorJob *s = mirror_job(job);
    int ret = 0;

    if (job_is_cancelled(job)) {
        goto out;
    }
    s->length = node_getlength(s->source);
    if (s->length < 0) {
        ret = (int)s->length;
        goto out;
    }
    int64_t target_length = node_getlength(s->target);
    if (target_length < 0) {
        ret = (int)target_length;
        goto out;
    }
    if (s->is_commit) {
        /* Active commit grows the base to the top's size. */
        if (s->length > target_length) {
            ret = child_co_truncate(s->target_edge, s->length, false,
                                    PREALLOC_MODE_OFF, errp);
            if (ret < 0) {
                goto out;
            }
        }
    } else if (s->length != target_length) {
        error_setg(errp, "Source and target image have different sizes");
        ret = -EINVAL;
        goto out;
    }

    if (s->length == 0) {
        job_transition_to_ready(job);
        while (!mirror_wants_to_finish(s)) {
            job_yield(job);
        }
        goto out;
    }

    if (s->sync != MIRROR_SYNC_NONE) {
        ret = mirror_dirty_init(s);
        if (ret < 0 || job_is_cancelled(job)) {
            goto out;
        }
    }
    s->copying = true;

    for (;;) {
        bool is_read = false;

        mirror_update_remaining(s);
        ret = block_copy_run(s->bcs, job, &is_read);
        if (job_is_cancelled(job)) {
            ret = 0;
            goto out;
        }
        if (s->write_ret < 0) {
            /* An active write or a flush failed with policy report. */
            ret = s->write_ret;
            goto out;
        }
        if (ret < 0) {
            BlockErrorAction a = mirror_error_action(s, is_read, -ret);
            if (a == BLOCK_ERROR_ACTION_REPORT) {
                goto out;
            }
            /* ignore: try again; stop: the job pauses here first. */
            ret = 0;
            job_pause_point(job);
            continue;
        }
        mirror_update_remaining(s);
        ret = mirror_punch(s, errp);
        if (ret < 0) {
            goto out;
        }
        if (s->active_count > 0) {
            /*
             * Guest writes are going to the target (write-blocking): wait
             * for one to end rather than spin, which would starve them.
             */
            co_queue_wait(&s->active_done);
            continue;
        }
        if (block_copy_remaining(s->bcs) > 0) {
            /* Marked again meanwhile (a recording bitmap). */
            job_pause_point(job);
            continue;
        }
        if (!job_is_ready(job)) {
            if (mirror_flush(s) < 0) {
                if (s->write_ret < 0) {
                    ret = s->write_ret;
                    goto out;
                }
                job_pause_point(job);
                continue;
            }
            /*
             * In sync: from now on a cancel is soft (the job finishes as
             * if completed, without the switch), so block-job-cancel
             * leaves the target consistent.
             */
            job_transition_to_ready(job);
        }
        if (mirror_wants_to_finish(s)) {
            /*
             * Hold the guests back and look one last time: nothing must
             * reach the source between the last copy and the switch.
             */
            s->in_drain = true;
            node_drain_begin(s->source);
            if (block_copy_remaining(s->bcs) == 0 && s->active_count == 0 &&
                mirror_flush(s) >= 0) {
                /* Stays drained until the graph has changed. */
                break;
            }
            node_drain_end(s->source);
            s->in_drain = false;
            if (s->write_ret < 0) {
                ret = s->write_ret;
                goto out;
            }
            continue;
        }
        job_sleep_ns(job, MIRROR_SLICE_NS);
    }

out:
    s->copying = false;
    while (s->active_count > 0) {
        co_queue_wait(&s->active_done);
    }
    /*
     * Whatever ends the run, the graph changes next: hold the source's
     * users back from here (QEMU drains here too, in the job, which lets
     * the command that ended the job reply before the job's last events).
     */
    if (!s->in_drain) {
        s->in_drain = true;
        node_drain_begin(s->source);
    }
    return ret;
}

static void mirror_complete(Job *job, GError **errp)
{
    MirrorJob *s = mirror_job(job);

    if (!job_is_ready(job)) {
        error_setg(errp, "The active block job '%s' cannot be completed",
                   job->id);
        return;
    }
    if (s->replaces && !s->to_replace) {
        BlockNode *r = node_find(s->replaces);
        if (!r) {
            error_setg(errp, "Node name '%s' not found", s->replaces);
            return;
        }
        node_ref(r);
        s->to_replace = r;
        /* Nothing may change it before the switch (QEMU's blocker). */
        node_op_block_all(r, s, "block device is in use by "
                          "block-job-complete");
    }
    s->should_complete = true;
    job_enter(job);
}

static bool mirror_cancel(Job *job, bool force)
{
    /* Before ready every cancel is forced: the target is not a copy. */
    force = force || !job_is_ready(job);
    if (force) {
        /* Writes waiting for the target (an NBD server's return) fail. */
        node_cancel_in_flight(mirror_job(job)->target);
    }
    return force;
}

static bool mirror_drained_poll(Job *job)
{
    MirrorJob *s = mirror_job(job);

    /* Our own drain at the end must not wait for ourselves. */
    if (s->in_drain) {
        return block_copy_in_flight(s->bcs) > 0;
    }
    return !job->paused && !job_is_cancelled(job);
}

static int mirror_prepare(Job *job)
{
    return mirror_exit_common(job, false);
}

static void mirror_abort(Job *job)
{
    mirror_exit_common(job, true);
}

static void mirror_free(Job *job)
{
    MirrorJob *s = mirror_job(job);

    if (s->bcs) {
        block_copy_free(s->bcs);
    }
    if (s->bitmap) {
        dirty_bitmap_release(s->bitmap);
    }
    if (s->to_replace) {
        node_op_unblock_all(s->to_replace, s);
        node_unref(s->to_replace);
    }
    if (s->filter) {
        node_unref(s->filter);
    }
    if (s->source) {
        node_unref(s->source);
    }
    if (s->target) {
        node_unref(s->target);
    }
    if (s->active) {
        g_ptr_array_free(s->active, true);
    }
    if (s->punch) {
        g_array_free(s->punch, true);
    }
    if (s->punch_below) {
        g_ptr_array_free(s->punch_below, true);
    }
    if (s->reopened) {
        mirror_restore_read_only(s);
        g_ptr_array_free(s->reopened, true);
    }
    g_free(s->replaces);
}

/* A drain or job-pause waits for the copies in flight: no idle class. */
static void mirror_pause_wanted(Job *job)
{
    MirrorJob *s = mirror_job(job);

    if (s->bcs) {
        block_copy_promote(s->bcs);
    }
}

static const JobDriver mirror_job_driver = {
    .instance_size = sizeof(MirrorJob),
    .job_type = JOB_TYPE_MIRROR,
    .run = mirror_run,
    .user_resume = block_job_user_resume,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .abort = mirror_abort,
    .cancel = mirror_cancel,
    .drained_poll = mirror_drained_poll,
    .free = mirror_free,
    .pause_wanted = mirror_pause_wanted,
};

static const JobDriver commit_active_job_driver = {
    .instance_size = sizeof(MirrorJob),
    .job_type = JOB_TYPE_COMMIT,
    .run = mirror_run,
    .user_resume = block_job_user_resume,
    .complete = mirror_complete,
    .prepare = mirror_prepare,
    .abort = mirror_abort,
    .cancel = mirror_cancel,
    .drained_poll = mirror_drained_poll,
    .free = mirror_free,
    .pause_wanted = mirror_pause_wanted,
};

/* ---- Start ---- */

/* QEMU's bdrv_get_default_bitmap_granularity(). */
static uint32_t default_granularity(BlockNode *target)
{
    BlockDriverInfo bdi;

    if (node_get_info(target, &bdi) == 0 && bdi.cluster_size > 0) {
        int64_t g = MAX(4096, bdi.cluster_size);
        return (uint32_t)MIN(g, 65536);
    }
    return 65536;
}

/* The next image down bs's chain past filters (bdrv_backing_chain_next). */
static BlockNode *backing_chain_next(BlockNode *bs)
{
    BlockNode *b = node_backing(node_skip_filters(bs));
    return b ? node_skip_filters(b) : NULL;
}

/* The next node down a chain: a filter's child or the backing node. */
BlockNode *mirror_filter_or_cow(BlockNode *bs)
{
    BlockNode *f = node_filtered_child(bs);
    return f ? f : node_backing(bs);
}

/* Is n in bs's chain (filters and backing files, bs included)? */
static bool chain_contains(BlockNode *bs, BlockNode *n)
{
    while (bs) {
        if (bs == n) {
            return true;
        }
        bs = mirror_filter_or_cow(bs);
    }
    return false;
}

typedef struct StartArgs {
    const JobDriver *driver;
    const char *job_id;
    BlockNode *bs;
    BlockNode *target;
    BlockNode *base;
    const char *replaces;
    int flags;
    int64_t speed;
    uint32_t granularity;
    int64_t buf_size;
    MirrorSync sync;
    MirrorBackingMode backing_mode;
    bool zero_target;
    BlockdevOnError on_source_error, on_target_error;
    bool unmap;
    const char *filter_node_name;
    MirrorCopy copy_mode;
    bool is_commit;
    bool merge_bitmaps;      /* mirror's; active commit's is in x */
    CommitActiveOptions x;
} StartArgs;

/* The images made writable for the drops are read-only again, once the
 * job's writing edges are gone. */
void mirror_restore_read_only(MirrorJob *s)
{
    if (!s->reopened) {
        return;
    }
    discard_source_restore(s->reopened);
}

static MirrorJob *mirror_start_job(const StartArgs *a, GError **errp)
{
    uint32_t granularity = a->granularity;
    int64_t buf_size = a->buf_size;
    MirrorJob *s = NULL;

    if (granularity == 0) {
        granularity = default_granularity(a->target);
    }
    if (buf_size < 0) {
        error_setg(errp, "Invalid parameter 'buf-size'");
        return NULL;
    }
    if (buf_size == 0) {
        buf_size = MIRROR_DEFAULT_BUF_SIZE;
    }
    if (node_skip_filters(a->bs) == node_skip_filters(a->target)) {
        error_setg(errp, "Can't mirror node into itself");
        return NULL;
    }
    /*
     * QEMU's mirror_run(): a target whose image names a backing file that
     * is not open (drive-mirror mode=existing opens it only at the end;
     * blockdev-add with backing=null) cannot fill a partly written cluster
     * from it, so when its clusters are larger than the granularity every
     * copy covers whole target clusters, and the target ends up with the
     * source's data around every range copied (QEMU's cow_bitmap and
     * mirror_cow_align(): the first copy into a cluster is widened to the
     * whole cluster).  Here the engine's granularity is the target's
     * cluster size: every copy, not only the first into a cluster, is
     * whole clusters, which allocates the same clusters with the same
     * data.
     */
    BlockDriverInfo bdi;
    int64_t target_cluster = 0;
    if (node_get_info(a->target, &bdi) == 0 && bdi.cluster_size > 0) {
        target_cluster = bdi.cluster_size;
    }
    int64_t cow_cluster = target_cluster ? target_cluster : 512;
    int64_t copy_granularity = granularity;
    if (node_backing_file(a->target)[0] && !backing_chain_next(a->target) &&
        granularity < cow_cluster) {
        copy_granularity = cow_cluster;
        buf_size = MAX(buf_size, cow_cluster);
    }

    bool target_is_backing = chain_contains(a->bs, a->target);
    if (!target_is_backing &&
        chain_contains(a->bs, node_skip_filters(a->target))) {
        error_setg(errp, "Cannot mirror to a filter on top of a node in the "
                   "source's backing chain");
        return NULL;
    }

    BlockNode *filter = mirror_top_insert(a->bs, a->filter_node_name,
                                          target_is_backing, errp);
    if (!filter) {
        return NULL;
    }

    s = block_job_create(a->job_id, a->driver, NULL, filter,
                         BLK_PERM_CONSISTENT_READ,
                         BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE_UNCHANGED |
                         BLK_PERM_WRITE, a->speed, a->flags, NULL, NULL,
                         errp);
    if (!s) {
        goto fail;
    }
    s->filter = filter;          /* the job holds the caller's reference */
    s->source = a->bs;
    node_ref(s->source);
    s->target = a->target;
    node_ref(s->target);
    s->base = a->base;
    s->is_commit = a->is_commit;
    s->merge_bitmaps = a->merge_bitmaps || a->x.merge_bitmaps;
    s->sync = a->sync;
    s->backing_mode = a->backing_mode;
    s->copy_mode = a->copy_mode;
    s->zero_target = a->zero_target;
    s->unmap = a->unmap;
    s->on_source_error = a->on_source_error;
    s->on_target_error = a->on_target_error;
    s->granularity = granularity;
    s->target_cluster = target_cluster;
    s->copy_granularity = copy_granularity;
    s->buf_size = (buf_size + granularity - 1) / granularity * granularity;
    s->replaces = g_strdup(a->replaces);
    s->x = a->x;
    s->active = g_ptr_array_new();
    co_queue_init(&s->active_done);

    /*
     * The target: written, never resized while the job runs (the base of
     * an active commit may need to grow to the top's size), and nobody
     * else may write it.  A base in use stays readable and writable by the
     * chain above it.
     */
    uint64_t tperm = BLK_PERM_WRITE;
    uint64_t tshared = BLK_PERM_WRITE_UNCHANGED;
    if (target_is_backing) {
        int64_t bs_size = node_getlength(a->bs);
        if (bs_size < 0) {
            error_setg_errno(errp, (int)-bs_size,
                             "Could not inquire top image size");
            goto fail;
        }
        int64_t t_size = node_getlength(a->target);
        if (t_size < 0) {
            error_setg_errno(errp, (int)-t_size,
                             "Could not inquire base image size");
            goto fail;
        }
        if (t_size < bs_size) {
            tperm |= BLK_PERM_RESIZE;
        }
        tshared |= BLK_PERM_CONSISTENT_READ | BLK_PERM_WRITE;
    }
    /* The target is written through a backend of its own, as QEMU's. */
    s->target_blk = blk_new(tperm, tshared);
    if (!blk_insert_node(s->target_blk, a->target, errp)) {
        goto fail;
    }
    s->target_edge = blk_root(s->target_blk);

    s->bitmap = node_create_dirty_bitmap(a->bs, (uint32_t)copy_granularity,
                                         NULL, errp);
    if (!s->bitmap) {
        goto fail;
    }
    /*
     * The job uses the source and the target (drains pause it, and other
     * jobs find them busy); nobody may resize the source under it.
     */
    BlockChild *src_edge = job_add_node(
        &s->common.job, "source", a->bs,
        a->x.discard_source ? BLK_PERM_WRITE : 0,
        BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE | BLK_PERM_CONSISTENT_READ,
        errp);
    if (!src_edge ||
        !job_add_node(&s->common.job, "target", a->target, 0, BLK_PERM_ALL,
                      errp)) {
        goto fail;
    }
    if (a->x.discard_source) {
        /*
         * Dropping the top's clusters is safe only when everything that
         * reads the top reads it through the filter, which then reads the
         * base below: no other node or user on the top itself.
         */
        BlockChild *via_filter = node_find_child(filter, "backing");
        for (BlockChild *c = node_next_parent(a->bs, NULL); c;
             c = node_next_parent(a->bs, c)) {
            if (c == src_edge || c == via_filter) {
                continue;
            }
            char *who = child_parent_desc(c);
            error_setg(errp, "Parameter 'x-strata-discard-source' needs the "
                       "top node '%s' to have no other users than the job, "
                       "but %s uses it", node_get_name(a->bs), who);
            g_free(who);
            goto fail;
        }
        s->punch_edge = src_edge;
        s->punch = g_array_new(false, false, sizeof(int64_t));
        s->punch_below = g_ptr_array_new();
        s->reopened = g_ptr_array_new();
    }
    if (target_is_backing) {
        /*
         * Active commit: the images between top and base go away at the
         * end.  They stay writable for the job writing the base below
         * them; only the filters right above the base keep a consistent
         * view for others.
         */
        BlockNode *base_data = node_skip_filters(a->target);
        BlockNode *above = a->bs;
        for (BlockNode *it = mirror_filter_or_cow(a->bs); it && it != a->target;
             it = mirror_filter_or_cow(it)) {
            uint64_t sh = BLK_PERM_WRITE_UNCHANGED | BLK_PERM_WRITE;
            /* Filters hold no data of their own: nothing to drop. */
            bool punch = s->punch && !node_filtered_child(it);
            if (node_skip_filters(it) == base_data) {
                sh |= BLK_PERM_CONSISTENT_READ;
            }
            if (punch && !discard_source_prepare(it, s->reopened, errp)) {
                goto fail;
            }
            BlockChild *edge = job_add_node(&s->common.job,
                                            "intermediate node", it,
                                            punch ? BLK_PERM_WRITE : 0, sh,
                                            errp);
            if (!edge) {
                goto fail;
            }
            if (s->punch && !discard_source_check_users(it, above, edge,
                                                      errp)) {
                goto fail;
            }
            if (punch) {
                /* Bottom first: see mirror_punch(). */
                g_ptr_array_insert(s->punch_below, 0, edge);
            }
            above = it;
        }
        if (!chain_freeze(filter, a->target, "mirror", errp)) {
            goto fail;
        }
        s->frozen = true;
    }

    s->source_edge = node_find_child(filter, "backing");
    BlockCopyOptions bo = {
        .source = s->source_edge,
        .target = s->target_edge,
        .bitmap = s->bitmap,
        .granularity = copy_granularity,
        .max_memory = (uint64_t)s->buf_size,
        /*
         * QEMU's requests: up to buf-size / 16 or 1 MiB, whichever is
         * more, within one iteration (buf-size), from the first one: a
         * request that fails or a speed limit then stop the job where
         * QEMU's stops (QEMU 040: a read error in the first 512 KiB of an
         * active commit reports offset 0).
         */
        .max_chunk = MAX(MIN(MAX(s->buf_size / MIRROR_MAX_IN_FLIGHT,
                                 MIRROR_MAX_IO_BYTES), s->buf_size),
                         copy_granularity),
        .fixed_chunk = true,
        .classify = mirror_classify,
        .classify_opaque = s,
        /*
         * Zero ranges are written as zeroes even to a new image, as QEMU
         * does: the target then allocates what the source allocates.
         */
        .target_reads_zeroes = false,
        .unmap = a->unmap,
        /*
         * Data chunks by copy_file_range where source and target end in
         * files of one protocol driver (qcow2 and raw pass it down): the
         * kernel copies page cache to page cache once, no read into our
         * buffer and write back out (QEMU 7.2's mirror always reads and
         * writes).  Anything that cannot falls back to read and write.
         */
        .use_copy_range = true,
        .progress = mirror_progress,
        .progress_opaque = s,
    };
    s->bcs = block_copy_new(&bo, errp);
    if (!s->bcs) {
        goto fail;
    }
    mirror_top_set_write_hook(filter, mirror_write_hook, s);
    job_start(&s->common.job);
    return s;

fail:
    if (s) {
        if (s->frozen) {
            chain_unfreeze(filter, a->target, "mirror");
            s->frozen = false;
        }
        if (s->bcs) {
            block_copy_free(s->bcs);
            s->bcs = NULL;
        }
        if (s->bitmap) {
            dirty_bitmap_release(s->bitmap);
            s->bitmap = NULL;
        }
        if (s->target_blk) {
            blk_unref(s->target_blk);
            s->target_blk = NULL;
        }
        job_remove_all_nodes(&s->common.job);
        mirror_restore_read_only(s);
        s->filter = NULL;
        mirror_top_remove(filter);
        job_early_fail(&s->common.job);
    } else {
        mirror_top_remove(filter);
    }
    node_unref(filter);
    return NULL;
}

BlockJob *mirror_start(const MirrorOptions *o, GError **errp)
{
    StartArgs a = {
        .driver = &mirror_job_driver,
        .job_id = o->job_id,
        .bs = o->source,
        .target = o->target,
        .base = o->sync == MIRROR_SYNC_TOP ? backing_chain_next(o->source)
                                           : NULL,
        .replaces = o->replaces,
        .flags = o->creation_flags,
        .speed = o->speed,
        .granularity = o->granularity,
        .buf_size = o->buf_size,
        .sync = o->sync,
        .backing_mode = o->backing_mode,
        .zero_target = o->zero_target,
        .on_source_error = o->on_source_error,
        .on_target_error = o->on_target_error,
        .unmap = o->unmap,
        .filter_node_name = o->filter_node_name,
        .copy_mode = o->copy_mode,
        .merge_bitmaps = o->merge_bitmaps,
    };
    MirrorJob *s = mirror_start_job(&a, errp);
    return s ? &s->common : NULL;
}

BlockJob *commit_active_start(const char *job_id, BlockNode *bs,
                              BlockNode *base, int creation_flags,
                              int64_t speed, BlockdevOnError on_error,
                              const char *filter_node_name,
                              const CommitActiveOptions *x, GError **errp)
{
    if (x && x->discard_source && !node_can_unallocate(bs)) {
        error_setg(errp, "Parameter 'x-strata-discard-source': format "
                   "'%s' of node '%s' cannot make ranges unallocated",
                   node_get_format_name(bs), node_get_name(bs));
        return NULL;
    }
    /*
     * The base is written from now on.  Only a start that fails makes it
     * read-only again: after the job, failed or not, it stays writable,
     * as in QEMU 7.2.
     */
    bool base_read_only = node_is_read_only(base);

    /*
     * The reopen drains, and the loop runs meanwhile: another client's
     * blockdev-del of bs (no job holds it yet) or a job's completion may
     * drop what the caller found by name.  Held until the job holds them.
     */
    node_ref(bs);
    node_ref(base);
    if (base_read_only && !node_reopen(base, NULL, false, errp)) {
        node_unref(base);
        node_unref(bs);
        return NULL;
    }
    StartArgs a = {
        .driver = &commit_active_job_driver,
        .job_id = job_id,
        .bs = bs,
        .target = base,
        .base = base,
        .flags = creation_flags,
        .speed = speed,
        .sync = MIRROR_SYNC_TOP,
        .backing_mode = MIRROR_LEAVE_BACKING_CHAIN,
        .on_source_error = on_error,
        .on_target_error = on_error,
        .unmap = true,
        .filter_node_name = filter_node_name,
        .copy_mode = MIRROR_COPY_BACKGROUND,
        .is_commit = true,
        .x = x ? *x : (CommitActiveOptions){ 0 },
    };
    MirrorJob *s = mirror_start_job(&a, errp);
    if (!s && base_read_only) {
        node_reopen(base, NULL, true, NULL);
    }
    node_unref(base);
    node_unref(bs);
    return s ? &s->common : NULL;
}
