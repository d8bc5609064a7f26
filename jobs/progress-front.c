/*
 * The progress of a job that QEMU runs one request after the other from
 * the start of the disk (stream, intermediate commit): QEMU's offset is
 * then always the end of the requests done so far, which is where a
 * failed or cancelled job stops, and what scripts compare (QEMU 030,
 * 040, 141).  The engine copies many ranges at once and finishes them in
 * any order, so the sum of what finished runs ahead of that: after a
 * failure, by every range in flight past it.  This reports only what is
 * done from offset 0 without a gap; ranges finished beyond the first gap
 * are kept (a handful: the ranges in flight) until the gap is filled.
 */
#include "progress-front.h"

void progress_front_init(ProgressFront *pf, Job *job)
{
    pf->job = job;
    pf->front = 0;
    pf->ahead = g_array_new(FALSE, FALSE, sizeof(int64_t));
}

void progress_front_destroy(ProgressFront *pf)
{
    if (pf->ahead) {
        g_array_free(pf->ahead, TRUE);
        pf->ahead = NULL;
    }
}

void progress_front_done(ProgressFront *pf, int64_t offset, int64_t bytes)
{
    int64_t start = offset, end = offset + bytes;
    int64_t *r;
    guint i = 0;

    if (bytes <= 0 || end <= pf->front) {
        return;
    }
    /* Join the new range with every kept one it overlaps or touches. */
    while (i < pf->ahead->len / 2) {
        r = &g_array_index(pf->ahead, int64_t, 2 * i);
        if (r[1] < start) {
            i++;
            continue;
        }
        if (r[0] > end) {
            break;
        }
        start = MIN(start, r[0]);
        end = MAX(end, r[1]);
        g_array_remove_range(pf->ahead, 2 * i, 2);
    }
    if (start > pf->front) {
        int64_t pair[2] = { start, end };
        g_array_insert_vals(pf->ahead, 2 * i, pair, 2);
        return;
    }
    /* It reaches the front: the front moves to its end. */
    job_progress_update(pf->job, (uint64_t)(end - pf->front));
    pf->front = end;
}
