/*
 * The job state machine, its verbs and transactions.
 *
 * Single-threaded: every job lives in the main thread's loop.  A job's
 * coroutine is entered only when `busy` goes from false to true, which
 * happens in job_enter_if() and job_enter_now_if(), so it is never
 * entered twice; the entry itself is a scheduled wake-up, except where
 * QEMU enters the job at once too: a pause or a drain's resume outside a
 * coroutine (job_enter_now_if()), which runs the job until it yields.
 */
#include <errno.h>
#include <string.h>
#include "strata/error.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/id.h"
#include "job-int.h"

/* ---- Tables (QEMU 7.2's facts) ---- */

static const char *const status_names[JOB_STATUS__MAX] = {
    "undefined", "created", "running", "paused", "ready", "standby",
    "waiting", "pending", "aborting", "concluded", "null",
};
static const char *const verb_names[JOB_VERB__MAX] = {
    "cancel", "pause", "resume", "set-speed", "complete", "dismiss",
    "finalize",
};
static const char *const type_names[JOB_TYPE__MAX] = {
    "commit", "stream", "mirror", "backup", "create", "amend",
    "snapshot-load", "snapshot-save", "snapshot-delete",
    "x-strata-machine-snapshot", "x-strata-machine-restore",
    "x-strata-block-check",
};

#define S(x) (1u << JOB_STATUS_##x)

/* For each state, the states it may move to. */
static const unsigned transitions[JOB_STATUS__MAX] = {
    [JOB_STATUS_UNDEFINED] = S(CREATED),
    [JOB_STATUS_CREATED] = S(RUNNING) | S(ABORTING) | S(NULL),
    [JOB_STATUS_RUNNING] = S(PAUSED) | S(READY) | S(WAITING) | S(ABORTING),
    [JOB_STATUS_PAUSED] = S(RUNNING),
    [JOB_STATUS_READY] = S(STANDBY) | S(WAITING) | S(ABORTING),
    [JOB_STATUS_STANDBY] = S(READY),
    [JOB_STATUS_WAITING] = S(PENDING) | S(ABORTING),
    [JOB_STATUS_PENDING] = S(ABORTING) | S(CONCLUDED),
    [JOB_STATUS_ABORTING] = S(ABORTING) | S(CONCLUDED),
    [JOB_STATUS_CONCLUDED] = S(NULL),
    [JOB_STATUS_NULL] = 0,
};

/* For each verb, the states that accept it. */
static const unsigned verbs[JOB_VERB__MAX] = {
    [JOB_VERB_CANCEL] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY) | S(WAITING) | S(PENDING),
    [JOB_VERB_PAUSE] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                       S(STANDBY),
    [JOB_VERB_RESUME] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                        S(STANDBY),
    [JOB_VERB_SET_SPEED] = S(CREATED) | S(RUNNING) | S(PAUSED) | S(READY) |
                           S(STANDBY),
    [JOB_VERB_COMPLETE] = S(READY) | S(STANDBY),
    [JOB_VERB_DISMISS] = S(CONCLUDED),
    [JOB_VERB_FINALIZE] = S(PENDING),
};

#undef S

const char *job_status_name(JobStatus s)
{
    return s < JOB_STATUS__MAX ? status_names[s] : NULL;
}

const char *job_verb_name(JobVerb v)
{
    return v < JOB_VERB__MAX ? verb_names[v] : NULL;
}

const char *job_type_name(JobType t)
{
    return t < JOB_TYPE__MAX ? type_names[t] : NULL;
}

bool job_transition_allowed(JobStatus from, JobStatus to)
{
    g_assert(from < JOB_STATUS__MAX && to < JOB_STATUS__MAX);
    return transitions[from] & (1u << to);
}

bool job_verb_allowed(JobVerb verb, JobStatus state)
{
    g_assert(verb < JOB_VERB__MAX && state < JOB_STATUS__MAX);
    return verbs[verb] & (1u << state);
}

/* ---- Registry and listeners ---- */

struct JobTxn {
    GList *jobs;
    bool aborting;
    /*
     * Its jobs' prepare/commit/abort callbacks run: they may drain, and a
     * drain runs the loop, which may answer a QMP cancel of one of them.
     * QEMU never answers QMP inside a job's completion; here a cancel in
     * the middle of it leaves the completion alone, as one that came just
     * after it would (it would find the job done).
     */
    int finishing;
    int refcnt;
};

/* Newest first: query-jobs lists them in this order, as QEMU. */
static GList *all_jobs;

typedef struct {
    JobListenerFunc *fn;
    void *opaque;
    unsigned handle;
} Listener;

static GArray *listeners;
static unsigned next_handle = 1;

unsigned job_add_listener(JobListenerFunc *fn, void *opaque)
{
    if (!listeners) {
        listeners = g_array_new(FALSE, FALSE, sizeof(Listener));
    }
    Listener l = { fn, opaque, next_handle++ };
    g_array_append_val(listeners, l);
    return l.handle;
}

void job_remove_listener(unsigned handle)
{
    for (guint i = 0; listeners && i < listeners->len; i++) {
        if (g_array_index(listeners, Listener, i).handle == handle) {
            g_array_remove_index(listeners, i);
            return;
        }
    }
}

void job_notify(Job *job, JobEvent ev, JobStatus old)
{
    if (!listeners || !listeners->len) {
        return;
    }
    /* A listener may add or remove listeners: walk a copy. */
    guint n = listeners->len;
    Listener *copy = g_memdup2(listeners->data, n * sizeof(Listener));
    for (guint i = 0; i < n; i++) {
        copy[i].fn(job, ev, old, copy[i].opaque);
    }
    g_free(copy);
}

static void transition(Job *job, JobStatus to)
{
    JobStatus from = job->status;
    g_assert(job_transition_allowed(from, to));
    job->status = to;
    if (from != to) {
        job_notify(job, JOB_EVENT_STATUS_CHANGE, from);
    }
}

bool job_apply_verb(Job *job, JobVerb verb, GError **errp)
{
    if (job_verb_allowed(verb, job->status)) {
        return true;
    }
    error_setg(errp, "Job '%s' in state '%s' cannot accept command verb '%s'",
               job->id, job_status_name(job->status), job_verb_name(verb));
    return false;
}

/* ---- Queries ---- */

Job *job_next(Job *job)
{
    if (!job) {
        return all_jobs ? all_jobs->data : NULL;
    }
    GList *l = g_list_find(all_jobs, job);
    return l && l->next ? l->next->data : NULL;
}

bool job_any_busy(void)
{
    for (GList *l = all_jobs; l; l = l->next) {
        if (((Job *)l->data)->busy) {
            return true;
        }
    }
    return false;
}

Job *job_find(const char *id)
{
    for (GList *l = all_jobs; l; l = l->next) {
        Job *job = l->data;
        if (job->id && !strcmp(job->id, id)) {
            return job;
        }
    }
    return NULL;
}

Job *job_find_err(const char *id, GError **errp)
{
    Job *job = job_find(id);
    if (!job) {
        error_setg(errp, "Job not found");
    }
    return job;
}

bool job_is_internal(const Job *job)
{
    return job->id == NULL;
}

JobType job_type(const Job *job)
{
    return job->driver->job_type;
}

bool job_is_completed(const Job *job)
{
    switch (job->status) {
    case JOB_STATUS_WAITING:
    case JOB_STATUS_PENDING:
    case JOB_STATUS_ABORTING:
    case JOB_STATUS_CONCLUDED:
    case JOB_STATUS_NULL:
        return true;
    default:
        return false;
    }
}

bool job_is_ready(const Job *job)
{
    return job->status == JOB_STATUS_READY ||
           job->status == JOB_STATUS_STANDBY;
}

bool job_is_cancelled(const Job *job)
{
    return job->force_cancel;
}

bool job_cancel_requested(const Job *job)
{
    return job->cancelled;
}

bool job_user_paused(const Job *job)
{
    return job->user_paused;
}

static bool job_started(const Job *job)
{
    return job->co != NULL;
}

static bool should_pause(const Job *job)
{
    return job->pause_count > 0;
}

/* ---- Transactions ---- */

JobTxn *job_txn_new(void)
{
    JobTxn *txn = g_new0(JobTxn, 1);
    txn->refcnt = 1;
    return txn;
}

static void txn_ref(JobTxn *txn)
{
    txn->refcnt++;
}

void job_txn_unref(JobTxn *txn)
{
    if (txn && --txn->refcnt == 0) {
        g_assert(txn->jobs == NULL);
        g_free(txn);
    }
}

static void txn_del_job(Job *job)
{
    if (job->txn) {
        job->txn->jobs = g_list_remove(job->txn->jobs, job);
        job_txn_unref(job->txn);
        job->txn = NULL;
    }
}

void job_txn_add_job(JobTxn *txn, Job *job)
{
    g_assert(!job_started(job));
    txn_del_job(job);
    job->txn = txn;
    /* Newest first, as QEMU's list: completion and abort go in this
     * order, and so do the events of a grouped transaction's jobs. */
    txn->jobs = g_list_prepend(txn->jobs, job);
    txn_ref(txn);
}

/*
 * fn on every job of job's transaction until one returns non-zero.  The
 * jobs may leave the transaction (and be freed) on the way: walk a
 * referenced copy.
 */
static int txn_apply(Job *job, int (*fn)(Job *))
{
    JobTxn *txn = job->txn;
    int rc = 0;
    txn_ref(txn);
    GList *copy = g_list_copy(txn->jobs);
    for (GList *l = copy; l; l = l->next) {
        job_ref(l->data);
    }
    for (GList *l = copy; l && !rc; l = l->next) {
        rc = fn(l->data);
    }
    g_list_free_full(copy, (GDestroyNotify)job_unref);
    job_txn_unref(txn);
    return rc;
}

/* ---- Creation and reference counting ---- */

void *job_create(const char *id, const JobDriver *driver, JobTxn *txn,
                 int flags, JobCompletionFunc *cb, void *opaque,
                 GError **errp)
{
    g_assert(driver->instance_size >= sizeof(Job) && driver->run);
    if (id) {
        if (flags & JOB_INTERNAL) {
            error_setg(errp, "Cannot specify job ID for internal job");
            return NULL;
        }
        if (!id_wellformed(id)) {
            error_setg(errp, "Invalid job ID '%s'", id);
            return NULL;
        }
        if (job_find(id)) {
            error_setg(errp, "Job ID '%s' already in use", id);
            return NULL;
        }
    } else if (!(flags & JOB_INTERNAL)) {
        error_setg(errp, "An explicit job ID is required");
        return NULL;
    }

    Job *job = g_malloc0(driver->instance_size);
    job->driver = driver;
    job->id = g_strdup(id);
    job->refcnt = 1;
    /* Not started counts as paused, so that a pause before start holds. */
    job->paused = true;
    job->pause_count = 1;
    job->auto_finalize = !(flags & JOB_MANUAL_FINALIZE);
    job->auto_dismiss = !(flags & JOB_MANUAL_DISMISS);
    job->cb = cb;
    job->cb_opaque = opaque;
    all_jobs = g_list_prepend(all_jobs, job);
    transition(job, JOB_STATUS_CREATED);

    /* A lone job is a transaction of one: one completion path for all. */
    if (!txn) {
        txn = job_txn_new();
        job_txn_add_job(txn, job);
        job_txn_unref(txn);
    } else {
        job_txn_add_job(txn, job);
    }
    return job;
}

void job_ref(Job *job)
{
    job->refcnt++;
}

static void timer_del(Job *job);

void job_unref(Job *job)
{
    if (--job->refcnt > 0) {
        return;
    }
    g_assert(job->status == JOB_STATUS_NULL);
    g_assert(!job->sleep_timer && !job->txn);
    if (job->driver->free) {
        job->driver->free(job);
    }
    job_remove_all_nodes(job);
    all_jobs = g_list_remove(all_jobs, job);
    g_clear_error(&job->err);
    g_free(job->id);
    g_free(job);
}

/* ---- Entering and yielding ---- */

static gboolean sleep_dispatch(GSource *src, GSourceFunc cb, gpointer data)
{
    g_source_set_ready_time(src, -1);
    return cb(data);
}

static GSourceFuncs sleep_funcs = {
    .dispatch = sleep_dispatch,
};

static gboolean sleep_cb(gpointer opaque)
{
    Job *job = opaque;
    timer_del(job);
    job_enter(job);
    return G_SOURCE_REMOVE;
}

static void timer_del(Job *job)
{
    if (job->sleep_timer) {
        g_source_destroy(job->sleep_timer);
        g_source_unref(job->sleep_timer);
        job->sleep_timer = NULL;
    }
}

static void timer_arm(Job *job, int64_t ns)
{
    /* A bare source with a ready time: glib's timeouts round to ms. */
    GSource *src = g_source_new(&sleep_funcs, sizeof(GSource));
    g_source_set_ready_time(src, g_get_monotonic_time() +
                                 (ns > 0 ? ns / 1000 : 0));
    g_source_set_callback(src, sleep_cb, job, NULL);
    g_source_attach(src, loop_context(loop_get()));
    job->sleep_timer = src;
}

static bool timer_not_pending(Job *job)
{
    return job->sleep_timer == NULL;
}

static bool timer_pending(Job *job)
{
    return job->sleep_timer != NULL;
}

/* Wake the coroutine if it is parked and cond (if any) agrees. */
static void job_enter_if(Job *job, bool (*cond)(Job *))
{
    if (!job_started(job) || job->deferred || job->busy) {
        return;
    }
    if (cond && !cond(job)) {
        return;
    }
    timer_del(job);
    job->busy = true;
    co_wake(job->co);
}

void job_enter(Job *job)
{
    job_enter_if(job, NULL);
}

/* Park the coroutine until job_enter() (or ns from now, if ns >= 0). */
static void coroutine_fn do_yield(Job *job, int64_t ns)
{
    if (ns >= 0) {
        timer_arm(job, ns);
    }
    job->busy = false;
    job_notify(job, JOB_EVENT_IDLE, job->status);
    /*
     * Only job_enter() (a resume, a cancel, the timer) and job_pause() end
     * the wait, and they set busy first: QEMU asserts busy here.  An entry
     * by anyone else (a co_wake() left over from an earlier wait) parks
     * again, the timer still armed.
     */
    while (!job->busy) {
        co_yield();
    }
}

void coroutine_fn job_pause_point(Job *job)
{
    g_assert(job_started(job) && co_self() == job->co);
    if (!should_pause(job) || job_is_cancelled(job)) {
        return;
    }
    if (job->driver->pause) {
        job->driver->pause(job);
    }
    if (should_pause(job) && !job_is_cancelled(job)) {
        JobStatus status = job->status;
        transition(job, status == JOB_STATUS_READY ? JOB_STATUS_STANDBY
                                                   : JOB_STATUS_PAUSED);
        job->paused = true;
        /*
         * QEMU leaves the pause at any wake-up; we stay while a pause is
         * still wanted, so a stray job_enter() cannot run the job on a
         * drained node.
         */
        do {
            do_yield(job, -1);
        } while (should_pause(job) && !job_is_cancelled(job));
        job->paused = false;
        transition(job, status);
    }
    if (job->driver->resume) {
        job->driver->resume(job);
    }
}

void coroutine_fn job_yield(Job *job)
{
    g_assert(job->busy);
    if (job_is_cancelled(job)) {
        return;
    }
    if (!should_pause(job)) {
        do_yield(job, -1);
    }
    job_pause_point(job);
}

void coroutine_fn job_sleep_ns(Job *job, int64_t ns)
{
    g_assert(job->busy);
    if (job_is_cancelled(job)) {
        return;
    }
    if (!should_pause(job)) {
        do_yield(job, ns);
    }
    job_pause_point(job);
}

/* ---- Pausing ---- */

/*
 * Outside a coroutine, QEMU's aio_co_wake() enters a job at once, which
 * strata's drains rely on (a drain begun or ended in a coroutine runs
 * from a BH for that, block/drain.c): an idle job that is not cancelled
 * (and for which cond, if given, holds) runs from the caller's frame until
 * it yields again.  true if it was entered so.
 */
static bool job_enter_now_if(Job *job, bool (*cond)(Job *))
{
    if (in_coroutine() || !job_started(job) || job->deferred ||
        job->busy || job_is_cancelled(job) || (cond && !cond(job))) {
        return false;
    }
    timer_del(job);
    job->busy = true;
    co_enter(job->co);
    return true;
}

void job_pause(Job *job)
{
    job->pause_count++;
    if (job->paused) {
        return;
    }
    /* Busy in run(): it parks only once what it waits for ends. */
    if (job->busy && !job->deferred && job->driver->pause_wanted) {
        job->driver->pause_wanted(job);
    }
    /*
     * An idle job parks (and says so) before job_pause() returns, so jobs
     * drained one after the other pause in that order, whatever wake-ups
     * of other jobs are already queued (qsd's shutdown events show it),
     * and a drain's wait finds it parked.  Entered now, it only passes its
     * pause point and yields again.
     */
    if (!job_enter_now_if(job, NULL)) {
        job_enter(job);
    }
}

static void resume(Job *job, bool now)
{
    g_assert(job->pause_count > 0);
    if (--job->pause_count) {
        return;
    }
    /* A sleeping job wakes when its timer says so. */
    if (!now || !job_enter_now_if(job, timer_not_pending)) {
        job_enter_if(job, timer_not_pending);
    }
}

/*
 * The end of a drain (or of an action's pause): entered now, the job
 * leaves its pause point (running / ready said) before the drain's end
 * returns, as QEMU's drained_end, and a drain just after this one pauses
 * it again.  A user's resume keeps its scheduled wake-up (job-resume runs
 * in a coroutine in the daemon anyway).
 */
void job_resume(Job *job)
{
    resume(job, true);
}

bool job_user_pause(Job *job, GError **errp)
{
    if (!job_apply_verb(job, JOB_VERB_PAUSE, errp)) {
        return false;
    }
    if (job->user_paused) {
        error_setg(errp, "Job is already paused");
        return false;
    }
    job->user_paused = true;
    job_pause(job);
    return true;
}

bool job_user_resume(Job *job, GError **errp)
{
    if (!job->user_paused || job->pause_count <= 0) {
        error_setg(errp, "Can't resume a job that was not paused");
        return false;
    }
    if (!job_apply_verb(job, JOB_VERB_RESUME, errp)) {
        return false;
    }
    if (job->driver->user_resume) {
        job->driver->user_resume(job);
    }
    job->user_paused = false;
    resume(job, false);
    return true;
}

/* ---- Progress and speed ---- */

void job_progress_update(Job *job, uint64_t done)
{
    job->progress_current += done;
    job_notify(job, JOB_EVENT_PROGRESS, job->status);
}

void job_progress_set_remaining(Job *job, uint64_t remaining)
{
    job->progress_total = job->progress_current + remaining;
    job_notify(job, JOB_EVENT_PROGRESS, job->status);
}

void job_progress_increase_remaining(Job *job, uint64_t delta)
{
    job->progress_total += delta;
    job_notify(job, JOB_EVENT_PROGRESS, job->status);
}

/* QEMU's BLOCK_JOB_SLICE_TIME: the rate is accounted per 100 ms. */
#define JOB_SLICE_NS (100 * 1000 * 1000)

bool job_set_speed(Job *job, int64_t speed, GError **errp)
{
    int64_t old = job->speed;
    if (!job_apply_verb(job, JOB_VERB_SET_SPEED, errp)) {
        return false;
    }
    if (speed < 0) {
        error_setg(errp, "Parameter 'speed' expects a non-negative value");
        return false;
    }
    ratelimit_set_speed(&job->limit, speed, JOB_SLICE_NS);
    job->speed = speed;
    if (job->driver->set_speed) {
        job->driver->set_speed(job, speed);
    }
    if (speed && speed <= old) {
        return true;
    }
    /* Faster or unlimited: cut a rate-limit sleep short. */
    job_enter_if(job, timer_pending);
    return true;
}

void job_ratelimit_processed(Job *job, uint64_t bytes)
{
    if (job->speed) {
        ratelimit_delay(&job->limit, bytes);
    }
}

void coroutine_fn job_ratelimit_sleep(Job *job)
{
    int64_t delay;
    do {
        delay = job->speed ? ratelimit_delay(&job->limit, 0) : 0;
        job_sleep_ns(job, delay);
    } while (delay && !job_is_cancelled(job));
}

/* ---- Completion ---- */

static void do_dismiss(Job *job)
{
    job->busy = false;
    job->paused = false;
    job->deferred = true;
    txn_del_job(job);
    transition(job, JOB_STATUS_NULL);
    job_unref(job);
}

void job_early_fail(Job *job)
{
    g_assert(job->status == JOB_STATUS_CREATED);
    do_dismiss(job);
}

static void conclude(Job *job)
{
    transition(job, JOB_STATUS_CONCLUDED);
    if (job->auto_dismiss || !job_started(job)) {
        do_dismiss(job);
    }
}

/* A cancelled job fails with -ECANCELED; a failed job moves to aborting. */
static void update_rc(Job *job)
{
    if (!job->ret && job_is_cancelled(job)) {
        job->ret = -ECANCELED;
    }
    if (job->ret) {
        if (!job->err) {
            error_setg(&job->err, "%s", g_strerror(-job->ret));
        }
        transition(job, JOB_STATUS_ABORTING);
    }
}

static int finalize_single(Job *job)
{
    g_assert(job_is_completed(job));
    update_rc(job);   /* a late failure of the transaction aborts this too */
    int ret = job->ret;
    if (!ret) {
        if (job->driver->commit) {
            job->driver->commit(job);
        }
    } else if (job->driver->abort) {
        job->driver->abort(job);
    }
    if (job->driver->clean) {
        job->driver->clean(job);
    }
    if (job->cb) {
        job->cb(job->cb_opaque, ret);
    }
    if (job_started(job)) {
        job_notify(job, job_is_cancelled(job) ? JOB_EVENT_CANCELLED
                                              : JOB_EVENT_COMPLETED,
                   job->status);
    }
    txn_del_job(job);
    conclude(job);
    return 0;
}

static void cancel_async(Job *job, bool force)
{
    if (job->driver->cancel) {
        force = job->driver->cancel(job, force);
    } else {
        force = true;
    }
    if (job->user_paused) {
        /* The caller wakes the job. */
        if (job->driver->user_resume) {
            job->driver->user_resume(job);
        }
        job->user_paused = false;
        g_assert(job->pause_count > 0);
        job->pause_count--;
    }
    /* A soft cancel of a job whose work is done changes nothing. */
    if (force || !job->deferred) {
        job->cancelled = true;
        job->force_cancel |= force;
    }
}

static int finish_sync(Job *job, bool (*finish)(Job *, GError **),
                       GError **errp);

static bool cancel_forced(Job *job, GError **errp)
{
    (void)errp;
    job_cancel(job, true);
    return true;
}

static bool cancel_soft(Job *job, GError **errp)
{
    (void)errp;
    job_cancel(job, false);
    return true;
}

/* One job of a transaction failed: cancel the others, abort them all. */
static void txn_abort(Job *job)
{
    JobTxn *txn = job->txn;
    if (txn->aborting) {
        return;    /* the job that started the abort does everything */
    }
    txn->aborting = true;
    txn_ref(txn);
    job_ref(job);
    for (GList *l = txn->jobs; l; l = l->next) {
        if (l->data != job) {
            cancel_async(l->data, true);
        }
    }
    while (txn->jobs) {
        Job *other = txn->jobs->data;
        if (!job_is_completed(other)) {
            g_assert(job_cancel_requested(other));
            finish_sync(other, NULL, NULL);
        }
        finalize_single(other);
    }
    job_unref(job);
    job_txn_unref(txn);
}

static int prepare(Job *job)
{
    if (job->ret == 0 && job->driver->prepare) {
        job->ret = job->driver->prepare(job);
        update_rc(job);
    }
    return job->ret;
}

static void do_finalize(Job *job)
{
    JobTxn *txn = job->txn;

    g_assert(txn);
    txn_ref(txn);
    txn->finishing++;
    if (txn_apply(job, prepare)) {
        txn_abort(job);
    } else {
        txn_apply(job, finalize_single);
    }
    txn->finishing--;
    job_txn_unref(txn);
}

static int to_pending(Job *job)
{
    transition(job, JOB_STATUS_PENDING);
    if (!job->auto_finalize) {
        job_notify(job, JOB_EVENT_PENDING, job->status);
    }
    return 0;
}

static int needs_finalize(Job *job)
{
    return !job->auto_finalize;
}

static void txn_success(Job *job)
{
    transition(job, JOB_STATUS_WAITING);
    for (GList *l = job->txn->jobs; l; l = l->next) {
        Job *other = l->data;
        if (!job_is_completed(other)) {
            return;    /* the last one to finish moves them all on */
        }
        g_assert(other->ret == 0);
    }
    txn_apply(job, to_pending);
    if (txn_apply(job, needs_finalize) == 0) {
        do_finalize(job);
    }
}

static void job_completed(Job *job)
{
    g_assert(job->txn && !job_is_completed(job));
    update_rc(job);
    if (job->ret) {
        txn_abort(job);
    } else {
        txn_success(job);
    }
}

static void job_exit(void *opaque)
{
    Job *job = opaque;
    job_ref(job);
    /*
     * Not really idle, but the completion callbacks may drain the job's
     * nodes, which must not wait for this job.
     */
    job->busy = false;
    job_notify(job, JOB_EVENT_IDLE, job->status);
    job_completed(job);
    job_unref(job);
}

static void coroutine_fn job_co_entry(void *opaque)
{
    Job *job = opaque;
    /* A pause requested before the start holds here. */
    job_pause_point(job);
    int ret = job->driver->run(job, &job->err);
    job->ret = ret;
    job->deferred = true;
    job->busy = true;
    loop_bh(job_exit, job);
}

void job_start(Job *job)
{
    g_assert(!job_started(job) && job->paused && job->status ==
             JOB_STATUS_CREATED);
    job->co = co_create(job_co_entry, job);
    job->pause_count--;
    job->busy = true;
    job->paused = false;
    transition(job, JOB_STATUS_RUNNING);
    if (in_coroutine()) {
        co_wake(job->co);
    } else {
        /* As QEMU: the job runs up to its first wait before we return. */
        co_enter(job->co);
    }
}

void job_cancel(Job *job, bool force)
{
    if (job->txn && job->txn->finishing) {
        return;
    }
    if (job->status == JOB_STATUS_CONCLUDED) {
        do_dismiss(job);
        return;
    }
    cancel_async(job, force);
    if (!job_started(job)) {
        job_completed(job);
    } else if (job->deferred) {
        /* Done already: only a forced cancel still aborts it. */
        if (job_is_cancelled(job)) {
            txn_abort(job);
        }
    } else {
        job_enter(job);
    }
}

bool job_user_cancel(Job *job, bool force, GError **errp)
{
    if (!job_apply_verb(job, JOB_VERB_CANCEL, errp)) {
        return false;
    }
    job_cancel(job, force);
    return true;
}

bool job_complete(Job *job, GError **errp)
{
    g_assert(job->id);
    if (!job_apply_verb(job, JOB_VERB_COMPLETE, errp)) {
        return false;
    }
    if (job_cancel_requested(job) || !job->driver->complete) {
        error_setg(errp, "The active block job '%s' cannot be completed",
                   job->id);
        return false;
    }
    GError *err = NULL;
    job->driver->complete(job, &err);
    if (err) {
        g_propagate_error(errp, err);
        return false;
    }
    return true;
}

bool job_finalize(Job *job, GError **errp)
{
    g_assert(job->id);
    if (!job_apply_verb(job, JOB_VERB_FINALIZE, errp)) {
        return false;
    }
    /*
     * Another finalize of the transaction waits in a prepare's drain (or
     * the automatic one runs the loop there): it finishes the work, and
     * doing it again would prepare twice and then finalize jobs already
     * concluded.  QEMU never runs a command there; here, as a cancel,
     * this one leaves the completion alone.
     */
    if (job->txn && job->txn->finishing) {
        return true;
    }
    do_finalize(job);
    return true;
}

bool job_dismiss(Job *job, GError **errp)
{
    g_assert(job->id);
    if (!job_apply_verb(job, JOB_VERB_DISMISS, errp)) {
        return false;
    }
    do_dismiss(job);
    return true;
}

/*
 * Wake a job that waits in job_yield() or a sleep, so that it sees what
 * changed; one parked at a pause point stays parked (waking it would only
 * make it park again, and the loop would spin).
 */
static void kick(Job *job)
{
    if (!job->paused) {
        job_enter(job);
    }
}

typedef struct {
    Job *job;
    Coroutine *co;
    bool done;          /* set by wait_done_bh once the job has completed */
} WaitDone;

static void wait_done_bh(void *opaque)
{
    WaitDone *w = opaque;
    LOOP_WAIT_WHILE((kick(w->job), !job_is_completed(w->job)));
    w->done = true;
    co_enter(w->co);
}

static int finish_sync(Job *job, bool (*finish)(Job *, GError **),
                       GError **errp)
{
    job_ref(job);
    if (finish) {
        GError *err = NULL;
        finish(job, &err);
        if (err) {
            g_propagate_error(errp, err);
            job_unref(job);
            return -EBUSY;
        }
    }
    if (in_coroutine()) {
        /* A QMP handler: wait from the loop, not on this stack. */
        WaitDone w = { job, co_self(), false };
        loop_bh(wait_done_bh, &w);
        /* w is the BH's until done: a stray entry must not end this
         * frame early (see node_drain_begin). */
        while (!w.done) {
            co_yield();
        }
    } else {
        LOOP_WAIT_WHILE((kick(job), !job_is_completed(job)));
    }
    int ret = (job_is_cancelled(job) && job->ret == 0) ? -ECANCELED
                                                       : job->ret;
    job_unref(job);
    return ret;
}

int job_cancel_sync(Job *job, bool force)
{
    return finish_sync(job, force ? cancel_forced : cancel_soft, NULL);
}

int job_complete_sync(Job *job, GError **errp)
{
    return finish_sync(job, job_complete, errp);
}

void job_cancel_sync_all(void)
{
    for (;;) {
        /* A dismissed job someone still holds is gone already: skip it. */
        Job *job = job_next(NULL);
        while (job && job->status == JOB_STATUS_NULL) {
            job = job_next(job);
        }
        if (!job) {
            return;
        }
        job_cancel_sync(job, true);
    }
}

void job_transition_to_ready(Job *job)
{
    transition(job, JOB_STATUS_READY);
    job_notify(job, JOB_EVENT_READY, job->status);
}
