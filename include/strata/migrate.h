/*
 * One save or load of guest RAM to or from a file, run by a thread of its
 * own (and its page channels) so that the main loop and the QMP monitor
 * keep going.  The thread reports back through main-loop callbacks; the
 * QMP state machine (qapi/cmd-migration.c) owns the descriptors, the RAM
 * block references and the status.
 */
#ifndef STRATA_MIGRATE_H
#define STRATA_MIGRATE_H

#include "strata/mapped-ram.h"
#include "strata/ram-block.h"

typedef struct MigRun MigRun;

/* Called in the main loop when the pages are done (the "device" phase). */
typedef void MigPagesDoneFn(void *opaque);
/* Called in the main loop at the end; @err NULL on success (not owned). */
typedef void MigDoneFn(void *opaque, const GError *err);

typedef struct MigSpec {
    MrTarget target;            /* descriptors stay the caller's */
    MrParams params;
    /* save: the blocks (id, used, host), copied */
    MrBlock *blocks;
    unsigned nb_blocks;
    /* save: rename this file to final_path once it is durable */
    const char *tmp_path;
    const char *final_path;
    MigPagesDoneFn *pages_done;
    MigDoneFn *done;
    void *opaque;
    /*
     * A live save (docs/migration.md "Live save"): @ram are the blocks'
     * RAM blocks (the tracked ones have their dirty log started by the
     * caller); passes while the VM runs, then @pre_switchover in the main
     * loop, and the save waits for mig_run_continue() or a cancel.
     */
    bool live;
    RamBlock **ram;
    uint64_t downtime_limit_ms;
    MigPagesDoneFn *pre_switchover;
    /* main loop: a dirty sync happened, MIGRATION_PASS @n */
    void (*pass)(void *opaque, uint64_t n);
} MigSpec;

/* A live save's counters (query-migrate), updated by the save thread. */
typedef struct MigLiveStats {
    _Atomic uint64_t syncs;         /* dirty-sync-count */
    _Atomic uint64_t dirty_rate;    /* pages per second at the last sync */
    _Atomic uint64_t remaining;     /* bytes owed in the current pass */
    _Atomic uint64_t expected_ms;   /* expected downtime */
    _Atomic uint64_t precopy_bytes; /* written before the switchover */
} MigLiveStats;

MigRun *mig_run_save(const MigSpec *spec);
/*
 * Load: @spec->blocks are the memory the daemon has (id, used = size,
 * host); the file's blocks with the same id are loaded into them (a size
 * mismatch fails the load before any page is written), the others are
 * skipped and listed by mig_run_skipped().
 */
MigRun *mig_run_load(const MigSpec *spec);

void mig_run_cancel(MigRun *r);
/* A live save waiting at pre-switchover goes on (the guest is paused). */
void mig_run_continue(MigRun *r);
MigLiveStats *mig_run_live_stats(MigRun *r);
bool mig_run_cancelled(MigRun *r);
MrStats *mig_run_stats(MigRun *r);
/* After done: RAM blocks of the file not loaded; sections not read. */
GPtrArray *mig_run_skipped(MigRun *r);
GPtrArray *mig_run_unread(MigRun *r);
/* A load: every page of the file is in guest memory (what failed, if
 * anything, came after: the device state). */
bool mig_run_ram_loaded(MigRun *r);
/* Joins the thread (it has ended when done was called). */
void mig_run_free(MigRun *r);

#endif
