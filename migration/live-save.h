/*
 * Live (iterative) saves of guest RAM into a mapped-ram file
 * (docs/migration.md "Live save").
 *
 * The RAM is written while the VM runs, pass after pass: the first pass
 * every page, each later one the pages the VM monitor marked in the dirty
 * log since the previous sync.  mapped-ram gives every page one place in
 * the file, so a page written again overwrites itself and the file never
 * grows.  When the pages left are few enough (live_plan_after_pass), the
 * save waits at "pre-switchover" for the monitor to pause its vCPUs and
 * say migrate-continue; the last dirty pages are then written with the
 * guest stopped, then the bitmaps (which now say which pages are stored
 * after the last pass), the stream's end, and fdatasync.
 *
 * Internal to migration/: migrate.c runs it in the save thread.
 */
#ifndef MIGRATION_LIVE_SAVE_H
#define MIGRATION_LIVE_SAVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "strata/mapped-ram.h"
#include "strata/migrate.h"
#include "strata/ram-block.h"

/* ---- when to stop iterating ---- */

/* More passes than this are not tried: the guest is not converging. */
#define LIVE_MAX_PASSES 10
/* Consecutive passes whose dirty set did not shrink before giving up. */
#define LIVE_MAX_STALLS 2

typedef enum {
    LIVE_ITERATE,               /* write the dirty pages with the VM running */
    LIVE_SWITCHOVER_CONVERGED,  /* expected downtime within the limit */
    LIVE_SWITCHOVER_STALLED,    /* the dirty set stopped shrinking */
    LIVE_SWITCHOVER_CAP,        /* LIVE_MAX_PASSES reached */
} LiveDecision;

typedef struct LivePlan {
    uint64_t downtime_limit_ms;     /* migrate-set-parameters downtime-limit */
    unsigned passes;                /* passes written so far */
    unsigned stalls;                /* passes in a row that did not shrink */
    uint64_t prev_dirty;            /* bytes dirty at the previous sync */
    double ns_per_byte;             /* cost of a byte in the last pass */
    uint64_t expected_ms;           /* what the last pass would take now */
} LivePlan;

void live_plan_init(LivePlan *p, uint64_t downtime_limit_ms);
/*
 * After a pass that handled @pass_bytes of RAM in @pass_ns (its flush
 * included) and the sync after it found @dirty_bytes to write: iterate
 * again or switch over.  Sets p->expected_ms, the time the last pass would
 * take at the cost per byte just measured.
 */
LiveDecision live_plan_after_pass(LivePlan *p, uint64_t pass_bytes,
                                  int64_t pass_ns, uint64_t dirty_bytes);

/* ---- one pass ---- */

/* What a pass did. */
typedef struct LivePassResult {
    uint64_t pages;             /* pages of the set handled */
    uint64_t written;           /* pages written (stored) */
    uint64_t zeroed;            /* pages stored before and zero now */
} LivePassResult;

/*
 * Writes, on @t's channels, the pages of each block whose bit is set in
 * @set[i] (NULL: none of that block): a non-zero page at its place, its
 * bit set in @stored[i]; a zero page gets its bit cleared, and if it was
 * stored before, its place in the file becomes a hole (or zeros where the
 * file system cannot punch one), so that no old guest data stays behind a
 * clear bit.  Runs of pages are written with one request each; zero
 * stretches shorter than 64 pages inside a run are written as zeros with
 * their bits clear, as a one-pass save does.  @throttle: apply
 * p->max_bandwidth.  @cancel is polled between chunks of 4 MiB.
 * @remaining (may be NULL) goes down by the bytes of the set handled.
 */
bool live_write_pass(const MrTarget *t, MrBlock *blocks, unsigned nb,
                     unsigned long *const *set, unsigned long **stored,
                     const MrParams *p, bool throttle, MrStats *stats,
                     atomic_bool *cancel, _Atomic uint64_t *remaining,
                     LivePassResult *res, GError **errp);

/* ---- the whole save ---- */

/* The counters (query-migrate) are strata/migrate.h's. */
typedef MigLiveStats LiveStats;

/* How the save talks to its owner (migrate.c). */
typedef struct LiveHooks {
    /* a sync happened: MIGRATION_PASS @n (any thread; posts to main loop) */
    void (*pass)(void *opaque, uint64_t n);
    /*
     * The pages left are few: report "pre-switchover", then block until
     * migrate-continue (true) or cancel (false).
     */
    bool (*wait_switchover)(void *opaque);
    void *opaque;
} LiveHooks;

/*
 * The live save of @nb blocks (id, used, host) into @t: @ram[i] is block
 * i's RAM block, tracked (its dirty log started by the caller) or not
 * (NULL or no log: written in the first and again in the last pass, with
 * the guest stopped).  Blocking: the save thread runs it.
 */
bool live_save(const MrTarget *t, MrBlock *blocks, unsigned nb,
               RamBlock *const *ram, const MrParams *p,
               uint64_t downtime_limit_ms, const LiveHooks *hooks,
               MrStats *stats, LiveStats *live, atomic_bool *cancel,
               GError **errp);

#endif
