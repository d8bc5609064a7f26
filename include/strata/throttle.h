/*
 * I/O throttling: QEMU's leaky-bucket accounting (util/throttle.c) and its
 * named groups (block/throttle-groups.c).
 *
 * A configuration has six buckets (bytes and operations, each for reads,
 * writes and the total).  Every request that is let through adds its size
 * (or its operation count) to the buckets it touches; the buckets leak at
 * their average rate.  A bucket holds a tenth of a second at the average
 * rate, or burst_length seconds at the burst rate `max` when one is set;
 * a request waits while any of its buckets is fuller than that.
 *
 * The arithmetic takes the time as an argument, so that tests drive it
 * with a clock of their own.
 */
#ifndef STRATA_THROTTLE_H
#define STRATA_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>

#include "strata/coroutine.h"
#include "strata/loop.h"

typedef enum {
    THROTTLE_BPS_TOTAL,
    THROTTLE_BPS_READ,
    THROTTLE_BPS_WRITE,
    THROTTLE_OPS_TOTAL,
    THROTTLE_OPS_READ,
    THROTTLE_OPS_WRITE,
    THROTTLE_BUCKETS,
} ThrottleBucketType;

/* The largest average or burst rate a bucket may have (QEMU's). */
#define THROTTLE_VALUE_MAX 1000000000000000LL

typedef struct LeakyBucket {
    uint64_t avg;            /* units per second; 0: no limit */
    uint64_t max;            /* burst rate; 0: none */
    double level;            /* units in the bucket */
    double burst_level;      /* units in the burst bucket (burst_length > 1) */
    unsigned burst_length;   /* seconds a burst at `max` may last */
} LeakyBucket;

typedef struct ThrottleConfig {
    LeakyBucket buckets[THROTTLE_BUCKETS];
    /* iops-size: an operation larger than this counts as size/op_size */
    uint64_t op_size;
} ThrottleConfig;

typedef struct ThrottleState {
    ThrottleConfig cfg;
    int64_t previous_leak;   /* ns, on the caller's clock */
} ThrottleState;

/* No limits, every burst length 1. */
void throttle_config_init(ThrottleConfig *cfg);
/* Any limit set? */
bool throttle_enabled(const ThrottleConfig *cfg);
/* QEMU 7.2's throttle_is_valid(): its checks in its order, its messages. */
bool throttle_is_valid(const ThrottleConfig *cfg, GError **errp);

/* Take cfg (levels emptied) at time now. */
void throttle_config(ThrottleState *ts, const ThrottleConfig *cfg,
                     int64_t now);
void throttle_get_config(const ThrottleState *ts, ThrottleConfig *cfg);

/* Let delta_ns worth of units leak out of the bucket. */
void throttle_leak_bucket(LeakyBucket *bkt, int64_t delta_ns);
/* How long until the bucket has room (ns; 0: it has room now). */
int64_t throttle_compute_wait(const LeakyBucket *bkt);
/*
 * Leak up to now; must a request of this direction wait?  *next_timestamp
 * is when it may go (now when it need not wait).
 */
bool throttle_compute_timer(ThrottleState *ts, bool is_write, int64_t now,
                            int64_t *next_timestamp);
/* A request of size bytes was let through. */
void throttle_account(ThrottleState *ts, bool is_write, uint64_t size);

/*
 * The parameters by their QAPI names ("iops-total", "bps-read-max-length",
 * "iops-size"), as ThrottleLimits and the throttle-group object's legacy
 * "x-" properties name them.
 */
typedef enum { THROTTLE_PARAM_AVG, THROTTLE_PARAM_MAX,
               THROTTLE_PARAM_BURST_LENGTH, THROTTLE_PARAM_IOPS_SIZE }
    ThrottleParamKind;
typedef struct ThrottleParam {
    const char *name;
    ThrottleBucketType bucket;
    ThrottleParamKind kind;
} ThrottleParam;
/* All of them, NULL-terminated by name. */
extern const ThrottleParam throttle_params[];
const ThrottleParam *throttle_param_find(const char *name);
int64_t throttle_param_get(const ThrottleConfig *cfg, const ThrottleParam *p);
/*
 * Store v as QEMU's ThrottleLimits conversion does: rates and iops-size
 * as unsigned 64-bit, a burst length past UINT_MAX refused ("iops-total-
 * max-length value must be in the range [0, 4294967295]").
 */
bool throttle_param_set(ThrottleConfig *cfg, const ThrottleParam *p,
                        int64_t v, GError **errp);

/* ---- Named groups (block/throttle-groups.c) ---- */

typedef struct ThrottleGroup ThrottleGroup;

/*
 * One user of a group: a throttle node.  Requests wait in its queues; the
 * group lets the members through round-robin, with timers in the member's
 * loop.  Embedded in the user's state; zeroed before register.
 */
typedef struct ThrottleGroupMember {
    ThrottleGroup *group;
    StrataLoop *loop;
    CoQueue reqs[2];           /* [is_write]; touched in `loop` only */
    unsigned pending_reqs[2];  /* under the group's lock */
    GSource *timers[2];
    bool timer_armed[2];       /* under the group's lock */
    int io_limits_disabled;    /* atomic: while drained, let all through */
    int restart_pending;       /* atomic: restart coroutines on their way */
} ThrottleGroupMember;

/*
 * A group named `name` with cfg, checked as QEMU's throttle-group object's
 * completion checks it ("A group with this name already exists",
 * throttle_is_valid()).  Clock: CLOCK_MONOTONIC.
 */
ThrottleGroup *throttle_group_create(const char *name,
                                     const ThrottleConfig *cfg,
                                     GError **errp);
/* Remove a group no member uses (see throttle_group_in_use). */
void throttle_group_destroy(ThrottleGroup *tg);
bool throttle_group_in_use(const ThrottleGroup *tg);
ThrottleGroup *throttle_group_find(const char *name);
void throttle_group_get_config(ThrottleGroup *tg, ThrottleConfig *cfg);
/* New limits (levels emptied); waiting requests are looked at again. */
void throttle_group_set_config(ThrottleGroup *tg, const ThrottleConfig *cfg);

/* Join the group named `name` (it must exist) with requests run in loop. */
void throttle_group_register(ThrottleGroupMember *tgm, const char *name,
                             StrataLoop *loop);
/* Leave it; nothing may be queued (the member is drained). */
void throttle_group_unregister(ThrottleGroupMember *tgm);
/*
 * Wait until a request of `bytes` may go, then account for it.
 * Coroutine context, in the member's loop.
 */
void coroutine_fn throttle_group_co_intercept(ThrottleGroupMember *tgm,
                                              int64_t bytes, bool is_write);
/* Drain: let everything through from now until drained_end. */
void throttle_group_drained_begin(ThrottleGroupMember *tgm);
void throttle_group_drained_end(ThrottleGroupMember *tgm);
/* The member's node moved to another loop (it is drained): timers follow. */
void throttle_group_set_loop(ThrottleGroupMember *tgm, StrataLoop *loop);

#endif
