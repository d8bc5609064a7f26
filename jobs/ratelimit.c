/*
 * Rate limiting by time slices: up to slice_quota bytes per slice_ns.
 * Work is reported after it is done; once a slice's quota is used up the
 * slice is stretched to cover everything dispatched in it, and the delay
 * is the time until that stretched slice ends, so the average holds.
 */
#include <glib.h>
#include "strata/job.h"
#include "strata/loop.h"

void ratelimit_set_speed(RateLimit *rl, uint64_t bytes_per_sec,
                         uint64_t slice_ns)
{
    rl->slice_ns = slice_ns;
    if (!bytes_per_sec) {
        rl->slice_quota = 0;
        return;
    }
    double quota = (double)bytes_per_sec * slice_ns / 1e9;
    rl->slice_quota = quota < 1 ? 1 : (uint64_t)quota;
}

int64_t ratelimit_delay_at(RateLimit *rl, uint64_t n, int64_t now)
{
    if (!rl->slice_quota) {
        return 0;
    }
    if (rl->slice_end < now) {
        /* The last slice (stretched or not) is over: start afresh. */
        rl->slice_start = now;
        rl->slice_end = now + (int64_t)rl->slice_ns;
        rl->dispatched = 0;
    }
    /*
     * Every byte counts, also those of a request that overran the quota:
     * callers report work already done (job_ratelimit_processed) and ask
     * for the delay afterwards with n = 0, so a dropped charge would let
     * the job run unlimited whenever chunks are smaller than the quota.
     */
    rl->dispatched += n;
    if (rl->dispatched < rl->slice_quota) {
        return 0;
    }
    double slices = (double)rl->dispatched / rl->slice_quota;
    rl->slice_end = rl->slice_start + (int64_t)(slices * rl->slice_ns);
    return rl->slice_end - now;
}

int64_t ratelimit_delay(RateLimit *rl, uint64_t n)
{
    return ratelimit_delay_at(rl, n, clock_ns());
}
