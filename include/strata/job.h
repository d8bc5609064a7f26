/*
 * Jobs: long-running operations with QEMU 7.2's state machine.
 *
 * A job is a coroutine (the driver's run()) plus a life cycle around it:
 *
 *   created -> running [<-> paused] [-> ready <-> standby]
 *           -> waiting -> pending -> concluded -> null      (success)
 *           -> aborting -> concluded -> null                (failure/cancel)
 *
 * The allowed transitions and the verbs each state accepts are QEMU 7.2's
 * (job_transition_allowed(), job_verb_allowed()).  Jobs that succeed wait
 * for the other jobs of their transaction (JobTxn), then all are prepared
 * and committed, or, if any fails or is cancelled, all are aborted.
 *
 * Everything here runs in the main thread's loop; run() and the functions
 * marked coroutine_fn run in the job's coroutine, the rest outside it.
 *
 * Upward notification (the QMP layer's JOB_STATUS_CHANGE, BLOCK_JOB_*
 * events) goes through job_add_listener(); this layer knows nothing about
 * QMP.
 *
 * A job using block nodes attaches to them with job_add_node(): it becomes
 * a non-node parent of the node ("job" parent class), so a drained node
 * pauses the job and the drain waits for the job to reach a pause point.
 */
#ifndef STRATA_JOB_H
#define STRATA_JOB_H

#include <glib.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"
#include "strata/coroutine.h"

/* ---- States, verbs, types (names and order are QEMU 7.2's enums) ---- */

typedef enum JobStatus {
    JOB_STATUS_UNDEFINED,
    JOB_STATUS_CREATED,
    JOB_STATUS_RUNNING,
    JOB_STATUS_PAUSED,
    JOB_STATUS_READY,
    JOB_STATUS_STANDBY,
    JOB_STATUS_WAITING,
    JOB_STATUS_PENDING,
    JOB_STATUS_ABORTING,
    JOB_STATUS_CONCLUDED,
    JOB_STATUS_NULL,
    JOB_STATUS__MAX,
} JobStatus;

typedef enum JobVerb {
    JOB_VERB_CANCEL,
    JOB_VERB_PAUSE,
    JOB_VERB_RESUME,
    JOB_VERB_SET_SPEED,
    JOB_VERB_COMPLETE,
    JOB_VERB_DISMISS,
    JOB_VERB_FINALIZE,
    JOB_VERB__MAX,
} JobVerb;

typedef enum JobType {
    JOB_TYPE_COMMIT,
    JOB_TYPE_STREAM,
    JOB_TYPE_MIRROR,
    JOB_TYPE_BACKUP,
    JOB_TYPE_CREATE,
    JOB_TYPE_AMEND,
    JOB_TYPE_SNAPSHOT_LOAD,
    JOB_TYPE_SNAPSHOT_SAVE,
    JOB_TYPE_SNAPSHOT_DELETE,
    JOB_TYPE_X_STRATA_MACHINE_SNAPSHOT,
    JOB_TYPE_X_STRATA_MACHINE_RESTORE,
    JOB_TYPE_X_STRATA_BLOCK_CHECK,
    JOB_TYPE__MAX,
} JobType;

/* "created", "set-speed", "snapshot-load": the QAPI spellings. */
const char *job_status_name(JobStatus s);
const char *job_verb_name(JobVerb v);
const char *job_type_name(JobType t);

/* QEMU 7.2's transition table and verb table. */
bool job_transition_allowed(JobStatus from, JobStatus to);
bool job_verb_allowed(JobVerb verb, JobStatus state);

/* ---- Rate limiting (set-speed) ---- */

/*
 * Bytes per time slice: a caller reports what it did and is told how long
 * to wait before doing more.  speed 0 means unlimited.
 */
typedef struct RateLimit {
    int64_t slice_start, slice_end;  /* ns, CLOCK_MONOTONIC */
    uint64_t slice_quota, slice_ns, dispatched;
} RateLimit;

void ratelimit_set_speed(RateLimit *rl, uint64_t bytes_per_sec,
                         uint64_t slice_ns);
/* Account n bytes at time now (ns); the delay in ns before the next
 * request may go (0: go now). */
int64_t ratelimit_delay_at(RateLimit *rl, uint64_t n, int64_t now);
int64_t ratelimit_delay(RateLimit *rl, uint64_t n);

/* ---- The driver table (one const struct per job type) ---- */

typedef struct Job Job;
typedef struct JobTxn JobTxn;

typedef struct JobDriver {
    size_t instance_size;        /* >= sizeof(Job); Job is the first member */
    JobType job_type;

    /*
     * The work, in the job's coroutine.  Call job_pause_point() (or
     * job_sleep_ns()/job_yield()) regularly and return when
     * job_is_cancelled().  0 or -errno; an error message may be left in
     * *errp (otherwise strerror() is what query-jobs shows).
     */
    int coroutine_fn (*run)(Job *job, GError **errp);

    /* Around a pause at a pause point, in the coroutine. */
    void coroutine_fn (*pause)(Job *job);
    void coroutine_fn (*resume)(Job *job);
    /* job-resume of a user-paused job (also when cancel drops the pause). */
    void (*user_resume)(Job *job);

    /* job-complete of a ready job; NULL: the job cannot be completed. */
    void (*complete)(Job *job, GError **errp);

    /*
     * Completion, for every job of a transaction together: prepare each
     * (may fail: then all abort), then commit each or abort each, then
     * clean each.  Called outside the coroutine.
     */
    int (*prepare)(Job *job);
    void (*commit)(Job *job);
    void (*abort)(Job *job);
    void (*clean)(Job *job);

    /*
     * A cancel request; returns whether it is forced.  NULL: every cancel
     * is forced.  A soft cancel (mirror in ready) lets the job finish as
     * if completed.
     */
    bool (*cancel)(Job *job, bool force);

    /* set-speed accepted: the driver may reconfigure. */
    void (*set_speed)(Job *job, int64_t speed);

    /*
     * Drain: does the busy job still have requests in flight on its
     * nodes?  NULL: a busy job counts as in flight until it pauses.
     */
    bool (*drained_poll)(Job *job);

    /* The last reference went away. */
    void (*free)(Job *job);

    /*
     * A pause (a drain, job-pause) is wanted while the job is busy: make
     * what its coroutine waits for end soon, so that it reaches its pause
     * point.  A copy job promotes the background copies it has in flight
     * at idle class (block_copy_promote): its coroutine runs again only
     * once one of them ends, which on a busy machine may take until the
     * thread pool's watchdog.  Called by job_pause(), outside the job's
     * coroutine (or from it), in the main loop.
     */
    void (*pause_wanted)(Job *job);
} JobDriver;

/* job_create() flags (QEMU's JobCreateFlags). */
enum {
    JOB_DEFAULT = 0,
    JOB_INTERNAL = 0x1,          /* no id, invisible to query-jobs */
    JOB_MANUAL_FINALIZE = 0x2,   /* auto-finalize=false */
    JOB_MANUAL_DISMISS = 0x4,    /* auto-dismiss=false */
};

typedef void JobCompletionFunc(void *opaque, int ret);

/*
 * The job.  Drivers embed it as the first member of their state and may
 * read it; its fields belong to jobs/ and change only through the
 * functions below.
 */
struct Job {
    const JobDriver *driver;
    char *id;                    /* NULL for internal jobs */
    int refcnt;
    JobStatus status;
    Coroutine *co;               /* set by job_start() */
    GSource *sleep_timer;        /* job_sleep_ns() pending */

    int pause_count;             /* user pause counts once, drains each */
    bool paused;                 /* parked at a pause point */
    bool user_paused;
    bool busy;                   /* the coroutine runs or will run soon */
    bool cancelled, force_cancel;
    bool deferred;               /* run() returned: completion is pending */
    bool auto_finalize, auto_dismiss;

    int ret;
    GError *err;

    uint64_t progress_current, progress_total;
    int64_t speed;
    RateLimit limit;

    JobCompletionFunc *cb;
    void *cb_opaque;

    JobTxn *txn;
    GSList *nodes;               /* BlockChild * edges from job_add_node() */
};

/* ---- Life cycle ---- */

/*
 * A new job in state created, not yet running (job_start() runs it).
 * id: required unless flags has JOB_INTERNAL (then it must be NULL); the
 * QEMU id rules apply (a letter, then letters, digits, '-', '.', '_').
 * txn: the transaction to join, or NULL for a transaction of its own.
 * cb(opaque, ret) is called when the job is finalized (committed or
 * aborted).  Errors in QEMU's words: "Invalid job ID 'x'", "Job ID 'x'
 * already in use", "An explicit job ID is required", "Cannot specify job
 * ID for internal job".
 */
void *job_create(const char *id, const JobDriver *driver, JobTxn *txn,
                 int flags, JobCompletionFunc *cb, void *opaque,
                 GError **errp);
/* created -> running; the coroutine first stops at a pause point. */
void job_start(Job *job);
/* Dismiss a job that failed to set up (still created, never started). */
void job_early_fail(Job *job);
void job_ref(Job *job);
void job_unref(Job *job);

/* ---- Lookup and query ---- */

/* The job named id (internal jobs have none), or NULL. */
Job *job_find(const char *id);
/* Like job_find(), with QEMU's "Job not found" (GenericError) if none. */
Job *job_find_err(const char *id, GError **errp);
/* All jobs, internal ones too: pass NULL first. */
Job *job_next(Job *job);
/*
 * Whether some job's coroutine runs or will run soon (busy), internal
 * jobs too.  Main thread only, as the job list is.
 */
bool job_any_busy(void);
bool job_is_internal(const Job *job);
JobType job_type(const Job *job);
bool job_is_completed(const Job *job);  /* waiting, pending, ... null */
bool job_is_ready(const Job *job);      /* ready or standby */

/* One line of query-jobs (what QMP's JobInfo reports). */
typedef struct JobQueryInfo {
    char *id;
    JobType type;
    JobStatus status;
    int64_t current_progress, total_progress;
    char *error;                 /* NULL: no error */
} JobQueryInfo;

JobQueryInfo *job_query(const Job *job);
void job_query_info_free(JobQueryInfo *info);
/* query-jobs: every job with an id, newest first (QEMU's order); the
 * array frees its JobInfos. */
GPtrArray *job_query_all(void);

/* ---- The QMP verbs (GError in QEMU's words) ---- */

/* "Job 'x' in state 'y' cannot accept command verb 'z'" unless allowed. */
bool job_apply_verb(Job *job, JobVerb verb, GError **errp);

bool job_user_pause(Job *job, GError **errp);
bool job_user_resume(Job *job, GError **errp);
bool job_user_cancel(Job *job, bool force, GError **errp);
/* Cancel without the verb check (shutdown, transactions, tests). */
void job_cancel(Job *job, bool force);
bool job_complete(Job *job, GError **errp);
bool job_finalize(Job *job, GError **errp);
/* Frees the job on success. */
bool job_dismiss(Job *job, GError **errp);
bool job_set_speed(Job *job, int64_t speed, GError **errp);
bool job_user_paused(const Job *job);

/*
 * Run the loop until the job completes (outside coroutines only):
 * cancel, force-cancel or complete it first.  Returns the job's result
 * (-ECANCELED if cancelled); the job is left to its auto-dismiss setting.
 */
int job_cancel_sync(Job *job, bool force);
int job_complete_sync(Job *job, GError **errp);
/* Force-cancel every job (daemon shutdown). */
void job_cancel_sync_all(void);

/* ---- Internal pause (drain, other layers): counted, nests ---- */

void job_pause(Job *job);
void job_resume(Job *job);

/* ---- For drivers, in the job's coroutine ---- */

/* Park here while the job should be paused (not when cancelled). */
void coroutine_fn job_pause_point(Job *job);
/* Wait until job_enter() (or a pause), then pass a pause point. */
void coroutine_fn job_yield(Job *job);
/* Sleep ns, cut short by cancel, pause or job_enter(). */
void coroutine_fn job_sleep_ns(Job *job, int64_t ns);
/* Sleep as long as set-speed's limit asks after job_ratelimit_processed(). */
void coroutine_fn job_ratelimit_sleep(Job *job);
void job_ratelimit_processed(Job *job, uint64_t bytes);
/* Wake the coroutine if it waits in job_yield()/job_sleep_ns(). */
void job_enter(Job *job);

bool job_is_cancelled(const Job *job);       /* a forced cancel: stop now */
bool job_cancel_requested(const Job *job);   /* any cancel, soft ones too */
/* running -> ready (mirror in sync). */
void job_transition_to_ready(Job *job);

void job_progress_update(Job *job, uint64_t done);
void job_progress_set_remaining(Job *job, uint64_t remaining);
void job_progress_increase_remaining(Job *job, uint64_t delta);

/* ---- Transactions ---- */

JobTxn *job_txn_new(void);
void job_txn_unref(JobTxn *txn);
/* Move a job that has not started into txn. */
void job_txn_add_job(JobTxn *txn, Job *job);

/* ---- Block nodes ---- */

/*
 * Attach the job to bs as a parent taking perm and sharing shared; name
 * is the edge's name ("main node", "target").  The edge goes away with
 * job_remove_all_nodes() or when the job is freed.
 */
BlockChild *job_add_node(Job *job, const char *name, BlockNode *bs,
                         uint64_t perm, uint64_t shared, GError **errp);
void job_remove_all_nodes(Job *job);

/* ---- Jobs of this layer ---- */

/*
 * blockdev-create: a "create" job named job_id making the image options
 * describe (QMP's BlockdevCreateOptions as JSON, see strata/create.h;
 * copied).  The job is started; it ends concluded (auto-dismiss off, as
 * QEMU's) with the creation's error, if any, for query-jobs.  Fails at
 * once for a bad job id or a driver that cannot create.
 */
bool blockdev_create_job(const char *job_id, json_t *options,
                         GError **errp);

/* ---- Listeners ---- */

typedef enum JobEvent {
    JOB_EVENT_STATUS_CHANGE,     /* job->status is new (old passed) */
    JOB_EVENT_PROGRESS,          /* current or total moved */
    JOB_EVENT_READY,             /* entered ready (BLOCK_JOB_READY) */
    JOB_EVENT_PENDING,           /* pending and waits for job-finalize */
    JOB_EVENT_COMPLETED,         /* finalized after success or failure */
    JOB_EVENT_CANCELLED,         /* finalized after a cancel */
    JOB_EVENT_IDLE,              /* the coroutine yielded */
} JobEvent;

/*
 * Called for every job, internal ones too (QEMU sends JOB_STATUS_CHANGE
 * only for jobs with an id: check job_is_internal()).  old is the previous
 * status for JOB_EVENT_STATUS_CHANGE, else the current one.  A listener
 * must not free the job.
 */
typedef void JobListenerFunc(Job *job, JobEvent ev, JobStatus old,
                             void *opaque);

/* Returns a handle for job_remove_listener(). */
unsigned job_add_listener(JobListenerFunc *fn, void *opaque);
void job_remove_listener(unsigned handle);

#endif
