/*
 * Throttle groups: limits shared by several throttle nodes (members), as
 * QEMU's block/throttle-groups.c does it.
 *
 * One ThrottleState per group.  A request checks the group's buckets; if
 * it must wait, the member that armed the group's timer for that direction
 * holds the token, and when the timer fires the next member with queued
 * requests (round-robin from the token) gets to go.  So members share the
 * limit fairly, and only one timer per direction is armed in a group.
 *
 * Threads: members may run in different loops.  The group's state is
 * under its mutex; a member's queues are touched only in the member's
 * loop, and its timers (GSources with a ready time) fire there.  Waking
 * another member is done by arming its timer for now, as QEMU does.
 */
#include <pthread.h>
#include <string.h>

#include "block-int.h"
#include "strata/error.h"
#include "strata/throttle.h"

struct ThrottleGroup {
    char *name;
    /* pthread's: glib's GMutex is invisible to ThreadSanitizer */
    pthread_mutex_t lock;
    ThrottleState ts;
    GList *members;                     /* round-robin order */
    ThrottleGroupMember *tokens[2];
    bool any_timer_armed[2];
    int users;
};

/* The groups by name; the main thread adds and removes them. */
static GList *groups;

/* ---- Timers: a GSource per direction, armed by its ready time ---- */

typedef struct {
    GSource source;
    ThrottleGroupMember *tgm;
    bool is_write;
} TimerSource;

static void timer_cb(ThrottleGroupMember *tgm, bool is_write);

static gboolean timer_dispatch(GSource *source, GSourceFunc cb,
                               gpointer data)
{
    TimerSource *t = (TimerSource *)source;
    (void)cb;
    (void)data;
    g_source_set_ready_time(source, -1);
    ThrottleGroup *tg = t->tgm->group;
    pthread_mutex_lock(&tg->lock);
    bool armed = t->tgm->timer_armed[t->is_write];
    t->tgm->timer_armed[t->is_write] = false;
    pthread_mutex_unlock(&tg->lock);
    /* a timer deleted after its ready time had passed: nothing to do */
    if (armed) {
        timer_cb(t->tgm, t->is_write);
    }
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs timer_funcs = { .dispatch = timer_dispatch };

static void timers_attach(ThrottleGroupMember *tgm, StrataLoop *loop)
{
    for (int i = 0; i < 2; i++) {
        GSource *s = g_source_new(&timer_funcs, sizeof(TimerSource));
        ((TimerSource *)s)->tgm = tgm;
        ((TimerSource *)s)->is_write = i;
        g_source_set_ready_time(s, -1);
        g_source_attach(s, loop_context(loop));
        tgm->timers[i] = s;
    }
}

static void timers_detach(ThrottleGroupMember *tgm)
{
    for (int i = 0; i < 2; i++) {
        g_source_destroy(tgm->timers[i]);
        g_source_unref(tgm->timers[i]);
        tgm->timers[i] = NULL;
        tgm->timer_armed[i] = false;
    }
}

/* Under the group's lock.  when: ns of CLOCK_MONOTONIC (clock_ns()). */
static void timer_mod(ThrottleGroupMember *tgm, bool is_write, int64_t when)
{
    int64_t delta_us = (when - clock_ns() + 999) / 1000;
    tgm->timer_armed[is_write] = true;
    g_source_set_ready_time(tgm->timers[is_write],
                            g_get_monotonic_time() + MAX(delta_us, 0));
}

static void timer_del(ThrottleGroupMember *tgm, bool is_write)
{
    tgm->timer_armed[is_write] = false;
    g_source_set_ready_time(tgm->timers[is_write], -1);
}

/* ---- Groups ---- */

ThrottleGroup *throttle_group_find(const char *name)
{
    for (GList *l = groups; l; l = l->next) {
        ThrottleGroup *tg = l->data;
        if (!strcmp(tg->name, name)) {
            return tg;
        }
    }
    return NULL;
}

ThrottleGroup *throttle_group_create(const char *name,
                                     const ThrottleConfig *cfg,
                                     GError **errp)
{
    if (throttle_group_find(name)) {
        error_setg(errp, "A group with this name already exists");
        return NULL;
    }
    if (!throttle_is_valid(cfg, errp)) {
        return NULL;
    }
    ThrottleGroup *tg = g_new0(ThrottleGroup, 1);
    tg->name = g_strdup(name);
    pthread_mutex_init(&tg->lock, NULL);
    throttle_config(&tg->ts, cfg, clock_ns());
    groups = g_list_append(groups, tg);
    return tg;
}

bool throttle_group_in_use(const ThrottleGroup *tg)
{
    return tg->users > 0;
}

void throttle_group_destroy(ThrottleGroup *tg)
{
    g_return_if_fail(tg->users == 0);
    groups = g_list_remove(groups, tg);
    pthread_mutex_destroy(&tg->lock);
    g_free(tg->name);
    g_free(tg);
}

void throttle_group_get_config(ThrottleGroup *tg, ThrottleConfig *cfg)
{
    pthread_mutex_lock(&tg->lock);
    throttle_get_config(&tg->ts, cfg);
    pthread_mutex_unlock(&tg->lock);
}

static void restart_member(ThrottleGroupMember *tgm);

void throttle_group_set_config(ThrottleGroup *tg, const ThrottleConfig *cfg)
{
    pthread_mutex_lock(&tg->lock);
    throttle_config(&tg->ts, cfg, clock_ns());
    GList *members = g_list_copy(tg->members);
    pthread_mutex_unlock(&tg->lock);
    /*
     * QEMU restarts only the member it was configured through; a group
     * object has none, so every member looks at its queues again.
     */
    for (GList *l = members; l; l = l->next) {
        restart_member(l->data);
    }
    g_list_free(members);
}

/* ---- Round robin ---- */

static ThrottleGroupMember *next_member(ThrottleGroupMember *tgm)
{
    GList *l = g_list_find(tgm->group->members, tgm);
    return l->next ? l->next->data : tgm->group->members->data;
}

/*
 * The member whose turn it is for is_write: the next one after the token
 * with requests queued, else tgm (which is about to queue one).
 */
static ThrottleGroupMember *next_token(ThrottleGroupMember *tgm,
                                       bool is_write)
{
    ThrottleGroup *tg = tgm->group;

    /*
     * A drained member goes first: it must not wait behind others'
     * throttled requests, or the drain would wait for the limit.
     */
    if (tgm->pending_reqs[is_write] &&
        g_atomic_int_get(&tgm->io_limits_disabled)) {
        return tgm;
    }
    ThrottleGroupMember *start = tg->tokens[is_write];
    ThrottleGroupMember *token = next_member(start);
    while (token != start && !token->pending_reqs[is_write]) {
        token = next_member(token);
    }
    if (token == start && !token->pending_reqs[is_write]) {
        token = tgm;
    }
    return token;
}

/* Must tgm's next request wait?  Arms a timer (and takes the token) if so. */
static bool schedule_timer(ThrottleGroupMember *tgm, bool is_write)
{
    ThrottleGroup *tg = tgm->group;
    int64_t next;

    if (g_atomic_int_get(&tgm->io_limits_disabled)) {
        return false;
    }
    if (tg->any_timer_armed[is_write]) {
        return true;
    }
    if (!throttle_compute_timer(&tg->ts, is_write, clock_ns(), &next)) {
        return false;
    }
    if (!tgm->timer_armed[is_write]) {
        timer_mod(tgm, is_write, next);
    }
    tg->tokens[is_write] = tgm;
    tg->any_timer_armed[is_write] = true;
    return true;
}

/* Under the group's lock: let the next queued request (of anyone) go. */
static void schedule_next_request(ThrottleGroupMember *tgm, bool is_write)
{
    ThrottleGroup *tg = tgm->group;
    ThrottleGroupMember *token = next_token(tgm, is_write);

    if (!token->pending_reqs[is_write]) {
        return;
    }
    if (schedule_timer(token, is_write)) {
        return;
    }
    /* it may go now: our own queue directly, another member by its timer */
    if (in_coroutine() && loop_get() == tgm->loop &&
        co_queue_next(&tgm->reqs[is_write])) {
        token = tgm;
    } else {
        timer_mod(token, is_write, clock_ns());
        tg->any_timer_armed[is_write] = true;
    }
    tg->tokens[is_write] = token;
}

void coroutine_fn throttle_group_co_intercept(ThrottleGroupMember *tgm,
                                              int64_t bytes, bool is_write)
{
    ThrottleGroup *tg = tgm->group;

    pthread_mutex_lock(&tg->lock);
    ThrottleGroupMember *token = next_token(tgm, is_write);
    bool must_wait = schedule_timer(token, is_write);

    /* behind a timer, or behind our own requests already waiting */
    if (must_wait || tgm->pending_reqs[is_write]) {
        tgm->pending_reqs[is_write]++;
        pthread_mutex_unlock(&tg->lock);
        co_queue_wait(&tgm->reqs[is_write]);
        pthread_mutex_lock(&tg->lock);
        tgm->pending_reqs[is_write]--;
    }
    throttle_account(&tg->ts, is_write, (uint64_t)bytes);
    schedule_next_request(tgm, is_write);
    pthread_mutex_unlock(&tg->lock);
}

/* ---- Restarting a member's queue (timer fired, drain, new limits) ---- */

typedef struct {
    ThrottleGroupMember *tgm;
    bool is_write;
} Restart;

static void coroutine_fn restart_co(void *opaque)
{
    Restart *r = opaque;
    ThrottleGroupMember *tgm = r->tgm;
    ThrottleGroup *tg = tgm->group;

    /* with nothing queued here, someone else may be next */
    if (!co_queue_next(&tgm->reqs[r->is_write])) {
        pthread_mutex_lock(&tg->lock);
        schedule_next_request(tgm, r->is_write);
        pthread_mutex_unlock(&tg->lock);
    }
    g_free(r);
    g_atomic_int_add(&tgm->restart_pending, -1);
    drain_kick();
}

static void restart_bh(void *opaque)
{
    co_enter(co_create(restart_co, opaque));
}

static void restart_queue(ThrottleGroupMember *tgm, bool is_write)
{
    Restart *r = g_new(Restart, 1);
    r->tgm = tgm;
    r->is_write = is_write;
    g_atomic_int_inc(&tgm->restart_pending);
    loop_bh_remote(tgm->loop, restart_bh, r);
}

static void timer_cb(ThrottleGroupMember *tgm, bool is_write)
{
    ThrottleGroup *tg = tgm->group;

    pthread_mutex_lock(&tg->lock);
    tg->any_timer_armed[is_write] = false;
    pthread_mutex_unlock(&tg->lock);
    restart_queue(tgm, is_write);
}

/* Fire the member's pending timers now, or look at its queues anyway. */
static void restart_member(ThrottleGroupMember *tgm)
{
    ThrottleGroup *tg = tgm->group;

    if (!tg) {
        return;     /* a node whose open failed before it joined */
    }
    for (int i = 0; i < 2; i++) {
        pthread_mutex_lock(&tg->lock);
        bool armed = tgm->timer_armed[i];
        if (armed) {
            timer_del(tgm, i);
            tg->any_timer_armed[i] = false;
        }
        pthread_mutex_unlock(&tg->lock);
        restart_queue(tgm, i);
    }
}

/* ---- Members ---- */

void throttle_group_register(ThrottleGroupMember *tgm, const char *name,
                             StrataLoop *loop)
{
    ThrottleGroup *tg = throttle_group_find(name);
    g_return_if_fail(tg != NULL);

    tgm->group = tg;
    tgm->loop = loop;
    g_atomic_int_set(&tgm->restart_pending, 0);
    co_queue_init(&tgm->reqs[0]);
    co_queue_init(&tgm->reqs[1]);
    timers_attach(tgm, loop);

    pthread_mutex_lock(&tg->lock);
    for (int i = 0; i < 2; i++) {
        if (!tg->tokens[i]) {
            tg->tokens[i] = tgm;
        }
    }
    /* QEMU inserts at the head of its list */
    tg->members = g_list_prepend(tg->members, tgm);
    tg->users++;
    pthread_mutex_unlock(&tg->lock);
}

void throttle_group_unregister(ThrottleGroupMember *tgm)
{
    ThrottleGroup *tg = tgm->group;

    if (!tg) {
        return;
    }
    drain_wait_begin();
    LOOP_WAIT_WHILE(g_atomic_int_get(&tgm->restart_pending) > 0);
    drain_wait_end();

    pthread_mutex_lock(&tg->lock);
    for (int i = 0; i < 2; i++) {
        g_assert(tgm->pending_reqs[i] == 0);
        if (tgm->timer_armed[i]) {
            /* the group's timer was ours: hand the turn on */
            timer_del(tgm, i);
            tg->any_timer_armed[i] = false;
        }
        if (tg->tokens[i] == tgm) {
            ThrottleGroupMember *token = next_member(tgm);
            tg->tokens[i] = token == tgm ? NULL : token;
        }
    }
    tg->members = g_list_remove(tg->members, tgm);
    tg->users--;
    for (int i = 0; i < 2; i++) {
        if (tg->tokens[i] && !tg->any_timer_armed[i]) {
            schedule_next_request(tg->tokens[i], i);
        }
    }
    pthread_mutex_unlock(&tg->lock);
    timers_detach(tgm);
    tgm->group = NULL;
}

void throttle_group_drained_begin(ThrottleGroupMember *tgm)
{
    if (g_atomic_int_add(&tgm->io_limits_disabled, 1) == 0) {
        restart_member(tgm);
    }
}

void throttle_group_drained_end(ThrottleGroupMember *tgm)
{
    g_assert(g_atomic_int_get(&tgm->io_limits_disabled) > 0);
    g_atomic_int_add(&tgm->io_limits_disabled, -1);
}

void throttle_group_set_loop(ThrottleGroupMember *tgm, StrataLoop *loop)
{
    ThrottleGroup *tg = tgm->group;

    drain_wait_begin();
    LOOP_WAIT_WHILE(g_atomic_int_get(&tgm->restart_pending) > 0);
    drain_wait_end();

    pthread_mutex_lock(&tg->lock);
    for (int i = 0; i < 2; i++) {
        if (tgm->timer_armed[i]) {
            /* the turn goes on to the others while the timers move */
            timer_del(tgm, i);
            tg->any_timer_armed[i] = false;
            schedule_next_request(tgm, i);
        }
    }
    pthread_mutex_unlock(&tg->lock);
    timers_detach(tgm);
    tgm->loop = loop;
    timers_attach(tgm, loop);
}
