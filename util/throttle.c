/*
 * The leaky-bucket accounting of I/O throttling (see strata/throttle.h),
 * with QEMU 7.2's arithmetic, so that a limit lets through what QEMU's
 * lets through.  No clock and no timers here: the caller passes the time.
 */
#include <limits.h>
#include <string.h>

#include "strata/error.h"
#include "strata/throttle.h"

#define NS_PER_SEC 1000000000LL

void throttle_config_init(ThrottleConfig *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        cfg->buckets[i].burst_length = 1;
    }
}

bool throttle_enabled(const ThrottleConfig *cfg)
{
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        if (cfg->buckets[i].avg > 0) {
            return true;
        }
    }
    return false;
}

bool throttle_is_valid(const ThrottleConfig *cfg, GError **errp)
{
    const LeakyBucket *b = cfg->buckets;
    bool bps = b[THROTTLE_BPS_TOTAL].avg &&
               (b[THROTTLE_BPS_READ].avg || b[THROTTLE_BPS_WRITE].avg);
    bool ops = b[THROTTLE_OPS_TOTAL].avg &&
               (b[THROTTLE_OPS_READ].avg || b[THROTTLE_OPS_WRITE].avg);
    bool bps_max = b[THROTTLE_BPS_TOTAL].max &&
                   (b[THROTTLE_BPS_READ].max || b[THROTTLE_BPS_WRITE].max);
    bool ops_max = b[THROTTLE_OPS_TOTAL].max &&
                   (b[THROTTLE_OPS_READ].max || b[THROTTLE_OPS_WRITE].max);

    if (bps || ops || bps_max || ops_max) {
        error_setg(errp, "bps/iops/max total values and read/write values "
                   "cannot be used at the same time");
        return false;
    }
    if (cfg->op_size && !b[THROTTLE_OPS_TOTAL].avg &&
        !b[THROTTLE_OPS_READ].avg && !b[THROTTLE_OPS_WRITE].avg) {
        error_setg(errp, "iops size requires an iops value to be set");
        return false;
    }
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        const LeakyBucket *bkt = &b[i];
        if (bkt->avg > THROTTLE_VALUE_MAX || bkt->max > THROTTLE_VALUE_MAX) {
            error_setg(errp, "bps/iops/max values must be within [0, %lld]",
                       THROTTLE_VALUE_MAX);
            return false;
        }
        if (!bkt->burst_length) {
            error_setg(errp, "the burst length cannot be 0");
            return false;
        }
        if (bkt->burst_length > 1 && !bkt->max) {
            error_setg(errp, "burst length set without burst rate");
            return false;
        }
        /* max * burst_length must stay a number the buckets can hold */
        if (bkt->max && bkt->burst_length > THROTTLE_VALUE_MAX / bkt->max) {
            error_setg(errp, "burst length too high for this burst rate");
            return false;
        }
        if (bkt->max && !bkt->avg) {
            error_setg(errp, "bps_max/iops_max require corresponding "
                       "bps/iops values");
            return false;
        }
        if (bkt->max && bkt->max < bkt->avg) {
            error_setg(errp, "bps_max/iops_max cannot be lower than bps/iops");
            return false;
        }
    }
    return true;
}

void throttle_config(ThrottleState *ts, const ThrottleConfig *cfg,
                     int64_t now)
{
    ts->cfg = *cfg;
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        ts->cfg.buckets[i].level = 0;
        ts->cfg.buckets[i].burst_level = 0;
    }
    ts->previous_leak = now;
}

void throttle_get_config(const ThrottleState *ts, ThrottleConfig *cfg)
{
    *cfg = ts->cfg;
}

void throttle_leak_bucket(LeakyBucket *bkt, int64_t delta_ns)
{
    double leak = (double)bkt->avg * (double)delta_ns / NS_PER_SEC;
    bkt->level = MAX(bkt->level - leak, 0);

    /*
     * A burst longer than a second has its own bucket, leaking at the
     * burst rate, so that `max` per second is what a burst gets.
     */
    if (bkt->burst_length > 1) {
        leak = (double)bkt->max * (double)delta_ns / NS_PER_SEC;
        bkt->burst_level = MAX(bkt->burst_level - leak, 0);
    }
}

static void throttle_do_leak(ThrottleState *ts, int64_t now)
{
    int64_t delta_ns = now - ts->previous_leak;

    ts->previous_leak = now;
    if (delta_ns <= 0) {
        return;
    }
    for (int i = 0; i < THROTTLE_BUCKETS; i++) {
        throttle_leak_bucket(&ts->cfg.buckets[i], delta_ns);
    }
}

static int64_t wait_for(double rate, double extra)
{
    return (int64_t)(extra * NS_PER_SEC / rate);
}

int64_t throttle_compute_wait(const LeakyBucket *bkt)
{
    double bucket_size, burst_bucket_size, extra;

    if (!bkt->avg) {
        return 0;
    }
    if (!bkt->max) {
        /*
         * Without a burst rate, a tenth of a second's worth still passes
         * at once: throttling every other request would cost far more.
         */
        bucket_size = (double)bkt->avg / 10;
        burst_bucket_size = 0;
    } else {
        /* a burst at `max` may last burst_length seconds */
        bucket_size = (double)bkt->max * bkt->burst_length;
        burst_bucket_size = (double)bkt->max / 10;
    }

    extra = bkt->level - bucket_size;
    if (extra > 0) {
        return wait_for((double)bkt->avg, extra);
    }
    /* the main bucket has room; the burst rate still holds during a burst */
    if (bkt->burst_length > 1) {
        extra = bkt->burst_level - burst_bucket_size;
        if (extra > 0) {
            return wait_for((double)bkt->max, extra);
        }
    }
    return 0;
}

bool throttle_compute_timer(ThrottleState *ts, bool is_write, int64_t now,
                            int64_t *next_timestamp)
{
    static const ThrottleBucketType check[2][4] = {
        { THROTTLE_BPS_TOTAL, THROTTLE_OPS_TOTAL, THROTTLE_BPS_READ,
          THROTTLE_OPS_READ },
        { THROTTLE_BPS_TOTAL, THROTTLE_OPS_TOTAL, THROTTLE_BPS_WRITE,
          THROTTLE_OPS_WRITE },
    };
    int64_t wait = 0;

    throttle_do_leak(ts, now);
    for (int i = 0; i < 4; i++) {
        int64_t w = throttle_compute_wait(&ts->cfg.buckets[check[is_write][i]]);
        wait = MAX(wait, w);
    }
    *next_timestamp = now + wait;
    return wait > 0;
}

void throttle_account(ThrottleState *ts, bool is_write, uint64_t size)
{
    const ThrottleBucketType bytes[2] = {
        THROTTLE_BPS_TOTAL, is_write ? THROTTLE_BPS_WRITE : THROTTLE_BPS_READ
    };
    const ThrottleBucketType ops[2] = {
        THROTTLE_OPS_TOTAL, is_write ? THROTTLE_OPS_WRITE : THROTTLE_OPS_READ
    };
    double units = 1.0;

    /* an operation larger than iops-size counts as several */
    if (ts->cfg.op_size && size > ts->cfg.op_size) {
        units = (double)size / ts->cfg.op_size;
    }
    for (int i = 0; i < 2; i++) {
        LeakyBucket *bkt = &ts->cfg.buckets[bytes[i]];
        bkt->level += size;
        if (bkt->burst_length > 1) {
            bkt->burst_level += size;
        }
        bkt = &ts->cfg.buckets[ops[i]];
        bkt->level += units;
        if (bkt->burst_length > 1) {
            bkt->burst_level += units;
        }
    }
}

const ThrottleParam throttle_params[] = {
    { "iops-total", THROTTLE_OPS_TOTAL, THROTTLE_PARAM_AVG },
    { "iops-total-max", THROTTLE_OPS_TOTAL, THROTTLE_PARAM_MAX },
    { "iops-total-max-length", THROTTLE_OPS_TOTAL, THROTTLE_PARAM_BURST_LENGTH },
    { "iops-read", THROTTLE_OPS_READ, THROTTLE_PARAM_AVG },
    { "iops-read-max", THROTTLE_OPS_READ, THROTTLE_PARAM_MAX },
    { "iops-read-max-length", THROTTLE_OPS_READ, THROTTLE_PARAM_BURST_LENGTH },
    { "iops-write", THROTTLE_OPS_WRITE, THROTTLE_PARAM_AVG },
    { "iops-write-max", THROTTLE_OPS_WRITE, THROTTLE_PARAM_MAX },
    { "iops-write-max-length", THROTTLE_OPS_WRITE, THROTTLE_PARAM_BURST_LENGTH },
    { "bps-total", THROTTLE_BPS_TOTAL, THROTTLE_PARAM_AVG },
    { "bps-total-max", THROTTLE_BPS_TOTAL, THROTTLE_PARAM_MAX },
    { "bps-total-max-length", THROTTLE_BPS_TOTAL, THROTTLE_PARAM_BURST_LENGTH },
    { "bps-read", THROTTLE_BPS_READ, THROTTLE_PARAM_AVG },
    { "bps-read-max", THROTTLE_BPS_READ, THROTTLE_PARAM_MAX },
    { "bps-read-max-length", THROTTLE_BPS_READ, THROTTLE_PARAM_BURST_LENGTH },
    { "bps-write", THROTTLE_BPS_WRITE, THROTTLE_PARAM_AVG },
    { "bps-write-max", THROTTLE_BPS_WRITE, THROTTLE_PARAM_MAX },
    { "bps-write-max-length", THROTTLE_BPS_WRITE, THROTTLE_PARAM_BURST_LENGTH },
    { "iops-size", 0, THROTTLE_PARAM_IOPS_SIZE },
    { NULL, 0, 0 },
};

const ThrottleParam *throttle_param_find(const char *name)
{
    for (const ThrottleParam *p = throttle_params; p->name; p++) {
        if (!strcmp(p->name, name)) {
            return p;
        }
    }
    return NULL;
}

int64_t throttle_param_get(const ThrottleConfig *cfg, const ThrottleParam *p)
{
    const LeakyBucket *b = &cfg->buckets[p->bucket];
    switch (p->kind) {
    case THROTTLE_PARAM_AVG:
        return (int64_t)b->avg;
    case THROTTLE_PARAM_MAX:
        return (int64_t)b->max;
    case THROTTLE_PARAM_BURST_LENGTH:
        return b->burst_length;
    default:
        return (int64_t)cfg->op_size;
    }
}

bool throttle_param_set(ThrottleConfig *cfg, const ThrottleParam *p,
                        int64_t v, GError **errp)
{
    LeakyBucket *b = &cfg->buckets[p->bucket];
    switch (p->kind) {
    case THROTTLE_PARAM_AVG:
        b->avg = (uint64_t)v;
        break;
    case THROTTLE_PARAM_MAX:
        b->max = (uint64_t)v;
        break;
    case THROTTLE_PARAM_BURST_LENGTH:
        /* signed compare, as QEMU's: a negative length wraps */
        if (v > (int64_t)UINT_MAX) {
            error_setg(errp, "%s value must be in the range [0, %u]",
                       p->name, UINT_MAX);
            return false;
        }
        b->burst_length = (unsigned)v;
        break;
    default:
        cfg->op_size = (uint64_t)v;
        break;
    }
    return true;
}
