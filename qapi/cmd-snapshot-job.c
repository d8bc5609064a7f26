/*
 * snapshot-save, snapshot-load and snapshot-delete: QEMU 7.2's machine
 * snapshot jobs.  Every node in `devices` gets (reverts to, loses) an
 * internal snapshot named `tag`; the VM state, the guest RAM that
 * strata-daemon holds (migration/vmstate-ram.c) and then the state of
 * every device back end the VM monitor registered (x-strata-device-state-
 * add, as `migrate` takes them all; `devices` keeps QEMU's meaning: block
 * nodes), lives in the VM state area of the node `vmstate`.
 *
 * QEMU's checks, their order and messages, including its quirks: a
 * read-only device "is writable but does not support snapshots"; save
 * refuses a tag only when every device has it already; delete removes
 * the first snapshot of that name on each device; a device named twice
 * is snapshotted twice.  What differs: strata-daemon runs no guest CPUs,
 * so there are no STOP and RESUME events; the VM monitor pauses its
 * vCPUs before snapshot-save or snapshot-load (docs/migration.md).
 * The VM clock of a snapshot is the time since the daemon started (the
 * daemon cannot see the guest's; QEMU with no machine counts the same).
 *
 * As in QEMU, the work happens before the command's reply and the job
 * concludes after it: run() yields once when it is done.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/device-state.h"
#include "strata/error.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/vmstate-ram.h"
#include "qapi-commands.h"
#include "job-settle.h"

typedef enum SnapOpKind { OP_SAVE, OP_LOAD, OP_DELETE } SnapOpKind;

typedef struct SnapshotJob {
    Job common;
    SnapOpKind op;
    char *tag;
    char *vmstate;                  /* NULL for delete */
    GPtrArray *devices;             /* char *, as given (repeats kept) */
    DsSet *streams;                 /* device state, taken from the registry */
    bool streams_taken;             /* ds_registry_end owed */
    atomic_bool cancel;             /* job-cancel: stop waiting for them */
} SnapshotJob;

/* ---- QEMU's bdrv_all_* over the device list ---- */

/* The nodes named by devices, referenced; NULL with errp set. */
static GPtrArray *get_devices(SnapshotJob *s, GError **errp)
{
    GPtrArray *nodes = g_ptr_array_new_with_free_func(
        (GDestroyNotify)node_unref);

    if (s->devices->len == 0) {
        error_setg(errp, "At least one device is required for snapshot");
        g_ptr_array_free(nodes, true);
        return NULL;
    }
    for (guint i = 0; i < s->devices->len; i++) {
        const char *name = s->devices->pdata[i];
        BlockNode *bs = node_find(name);
        if (!bs) {
            error_setg(errp, "No block device node '%s'", name);
            g_ptr_array_free(nodes, true);
            return NULL;
        }
        node_ref(bs);
        g_ptr_array_add(nodes, bs);
    }
    return nodes;
}

/* QEMU's bdrv_can_snapshot: writable, and internal snapshots somewhere. */
static bool can_snapshot(BlockNode *bs)
{
    return !node_is_read_only(bs) && node_snapshot_supported(bs);
}

static bool all_can_snapshot(GPtrArray *nodes, GError **errp)
{
    for (guint i = 0; i < nodes->len; i++) {
        BlockNode *bs = nodes->pdata[i];
        if (!can_snapshot(bs)) {
            error_setg(errp, "Device '%s' is writable but does not support "
                       "snapshots", node_get_name(bs));
            return false;
        }
    }
    return true;
}

/* QEMU's bdrv_snapshot_find: 0 with the first snapshot named name. */
static int find_by_name(BlockNode *bs, const char *name, NodeSnapshot *out)
{
    int ret = node_snapshot_find(bs, NULL, name, out);

    return ret == 1 ? 0 : ret == 0 ? -ENOENT : ret;
}

/* 1 if every device has a snapshot named name, 0 if one lacks it. */
static int all_have_snapshot(GPtrArray *nodes, const char *name,
                             GError **errp)
{
    for (guint i = 0; i < nodes->len; i++) {
        BlockNode *bs = nodes->pdata[i];
        NodeSnapshot sn;
        int ret = find_by_name(bs, name, &sn);
        if (ret == -ENOENT) {
            return 0;
        }
        if (ret < 0) {
            error_setg(errp, "Could not check snapshot '%s' on '%s': %s",
                       name, node_get_name(bs), g_strerror(-ret));
            return ret;
        }
    }
    return 1;
}

static BlockNode *find_vmstate(GPtrArray *nodes, const char *vmstate,
                               GError **errp)
{
    for (guint i = 0; i < nodes->len; i++) {
        BlockNode *bs = nodes->pdata[i];
        if (!strcmp(node_get_name(bs), vmstate)) {
            return bs;
        }
    }
    error_setg(errp, "vmstate block device '%s' does not exist", vmstate);
    return NULL;
}

static void drain_all_nodes(GPtrArray *nodes, bool begin)
{
    for (guint i = 0; i < nodes->len; i++) {
        guint k = begin ? i : nodes->len - 1 - i;
        if (begin) {
            node_drain_begin(nodes->pdata[k]);
        } else {
            node_drain_end(nodes->pdata[k]);
        }
    }
}

/*
 * Every registered device state stream for this job (a save reads them, a
 * load writes them), checked before the disks are touched.
 */
static bool take_streams(SnapshotJob *s, bool incoming, GError **errp)
{
    if (!ds_registry_begin(incoming, incoming ? "snapshot-load"
                                              : "snapshot-save",
                           s->common.id, &s->streams, errp)) {
        return false;
    }
    s->streams_taken = true;
    return true;
}

/* The daemon's "VM clock": nanoseconds since the program started. */
static int64_t started_us;

__attribute__((constructor)) static void note_start(void)
{
    started_us = g_get_monotonic_time();
}

/* ---- The three operations ---- */

static int coroutine_fn do_save(SnapshotJob *s, GPtrArray *nodes,
                                GError **errp)
{
    BlockNode *vm_bs;
    int ret = all_have_snapshot(nodes, s->tag, errp);
    int64_t vm_size;

    if (ret < 0) {
        return ret;
    }
    if (ret > 0) {
        error_setg(errp, "Snapshot '%s' already exists in one or more "
                   "devices", s->tag);
        return -EEXIST;
    }
    vm_bs = find_vmstate(nodes, s->vmstate, errp);
    if (!vm_bs) {
        return -ENOENT;
    }
    if (!take_streams(s, false, errp)) {
        return -EINVAL;
    }

    drain_all_nodes(nodes, true);
    vm_size = vmstate_ram_save(vm_bs, s->streams, &s->cancel, errp);
    ret = vm_size < 0 ? (int)vm_size : 0;

    /* Taken one by one; a failure removes what this job took. */
    GArray *taken = g_array_new(false, false, sizeof(NodeSnapshot));
    int64_t now = g_get_real_time();
    for (guint i = 0; i < nodes->len && ret == 0; i++) {
        BlockNode *bs = nodes->pdata[i];
        NodeSnapshot sn = { .icount = UINT64_MAX };
        GError *local = NULL;

        g_strlcpy(sn.name, s->tag, sizeof(sn.name));
        sn.date_sec = (uint32_t)(now / G_USEC_PER_SEC);
        sn.date_nsec = (uint32_t)(now % G_USEC_PER_SEC) * 1000;
        sn.vm_clock_nsec = (uint64_t)(g_get_monotonic_time() - started_us) *
                           1000;
        sn.vm_state_size = bs == vm_bs ? (uint64_t)vm_size : 0;
        ret = node_snapshot_create(bs, &sn, &local);
        if (ret < 0) {
            error_setg(errp, "Could not create snapshot '%s' on '%s': %s",
                       s->tag, node_get_name(bs), local->message);
            g_error_free(local);
            break;
        }
        g_array_append_val(taken, sn);   /* id_str: filled by the driver */
    }
    if (ret < 0) {
        for (guint i = 0; i < taken->len; i++) {
            NodeSnapshot *sn = &g_array_index(taken, NodeSnapshot, i);
            node_snapshot_delete(nodes->pdata[i],
                                 sn->id_str[0] ? sn->id_str : NULL,
                                 sn->name, NULL);
        }
        /* their states were read, but no snapshot keeps them */
        for (unsigned i = 0; s->streams && i < ds_set_count(s->streams);
             i++) {
            DsStream *st = ds_set_get(s->streams, i);
            if (atomic_load(&st->outcome) == DS_DONE) {
                atomic_store(&st->outcome, DS_FAILED);
            }
        }
    }
    g_array_free(taken, true);
    drain_all_nodes(nodes, false);
    return ret;
}

static int coroutine_fn do_load(SnapshotJob *s, GPtrArray *nodes,
                                GError **errp)
{
    NodeSnapshot sn;
    BlockNode *vm_bs;
    GError *local = NULL;
    int ret = all_have_snapshot(nodes, s->tag, errp);

    if (ret < 0) {
        return ret;
    }
    if (ret == 0) {
        error_setg(errp, "Snapshot '%s' does not exist in one or more "
                   "devices", s->tag);
        return -ENOENT;
    }
    vm_bs = find_vmstate(nodes, s->vmstate, errp);
    if (!vm_bs) {
        return -ENOENT;
    }
    ret = find_by_name(vm_bs, s->tag, &sn);
    if (ret < 0) {
        error_setg(errp, "Snapshot '%s' does not exist in one or more "
                   "devices", s->tag);
        return ret;
    }
    if (sn.vm_state_size == 0) {
        error_setg(errp, "This is a disk-only snapshot. Revert to it  "
                   "offline using qemu-img");
        return -EINVAL;
    }
    if (!take_streams(s, true, errp)) {
        return -EINVAL;
    }

    drain_all_nodes(nodes, true);
    for (guint i = 0; i < nodes->len; i++) {
        BlockNode *bs = nodes->pdata[i];
        ret = node_snapshot_goto(bs, s->tag, &local);
        if (ret < 0) {
            error_setg(errp, "Could not load snapshot '%s' on '%s': %s",
                       s->tag, node_get_name(bs), local->message);
            g_clear_error(&local);
            break;
        }
    }
    if (ret == 0) {
        bool about_devices;
        ret = vmstate_ram_load(vm_bs, (int64_t)sn.vm_state_size, s->streams,
                               &s->cancel, &about_devices, &local);
        if (ret < 0) {
            /* QEMU prints the cause and gives the job this message. */
            error_print("%s", local->message);
            if (about_devices) {
                /* no QEMU message for these: the job says what happened */
                error_setg(errp, "Error %d while loading VM state: %s (the "
                           "disks are at snapshot '%s')", ret,
                           local->message, s->tag);
            } else {
                error_setg(errp, "Error %d while loading VM state", ret);
            }
            g_clear_error(&local);
        }
    }
    drain_all_nodes(nodes, false);
    return ret;
}

static int coroutine_fn do_delete(SnapshotJob *s, GPtrArray *nodes,
                                  GError **errp)
{
    for (guint i = 0; i < nodes->len; i++) {
        BlockNode *bs = nodes->pdata[i];
        NodeSnapshot sn;
        GError *local = NULL;
        int ret = find_by_name(bs, s->tag, &sn);

        if (ret == -ENOENT) {
            continue;
        }
        if (ret == 0) {
            ret = node_snapshot_delete(bs, sn.id_str, sn.name, &local);
        }
        if (ret < 0) {
            error_setg(errp, "Could not delete snapshot '%s' on '%s': %s",
                       s->tag, node_get_name(bs),
                       local ? local->message : g_strerror(-ret));
            g_clear_error(&local);
            return ret;
        }
    }
    return 0;
}

/* ---- The job ---- */

typedef struct {
    Coroutine *co;
    bool done;          /* set by wake_bh */
} LastYield;

static void wake_bh(void *opaque)
{
    LastYield *y = opaque;
    y->done = true;
    co_wake(y->co);
}

static int coroutine_fn snapshot_run(Job *job, GError **errp)
{
    SnapshotJob *s = (SnapshotJob *)job;
    GPtrArray *nodes;
    int ret;

    job_progress_set_remaining(job, 1);
    nodes = get_devices(s, errp);
    if (!nodes) {
        ret = -ENOENT;
    } else if (!all_can_snapshot(nodes, errp)) {
        ret = -ENOTSUP;
    } else if (s->op == OP_SAVE) {
        ret = do_save(s, nodes, errp);
    } else if (s->op == OP_LOAD) {
        ret = do_load(s, nodes, errp);
    } else {
        ret = do_delete(s, nodes, errp);
    }
    if (nodes) {
        g_ptr_array_free(nodes, true);
    }
    if (s->streams_taken) {
        /* spent streams closed, the others registered again */
        ds_registry_end(s->streams);
        s->streams = NULL;
        s->streams_taken = false;
    }
    job_progress_update(job, 1);
    /* The reply goes out before the job concludes (see above). */
    LastYield y = { co_self(), false };
    loop_bh(wake_bh, &y);
    /*
     * y is the BH's until it sets done: a stray entry before that must
     * not end run(), or the job would conclude before the reply and the
     * BH wake a coroutine that has finished.
     */
    while (!y.done) {
        co_yield();
    }
    return ret;
}

/* Forced: a save or load waiting for a back end stops (and fails). */
static bool snapshot_cancel(Job *job, bool force)
{
    SnapshotJob *s = (SnapshotJob *)job;

    (void)force;
    atomic_store(&s->cancel, true);
    return true;
}

static void snapshot_free(Job *job)
{
    SnapshotJob *s = (SnapshotJob *)job;
    g_free(s->tag);
    g_free(s->vmstate);
    g_ptr_array_free(s->devices, true);
}

static const JobDriver save_driver = {
    .instance_size = sizeof(SnapshotJob),
    .job_type = JOB_TYPE_SNAPSHOT_SAVE,
    .run = snapshot_run,
    .cancel = snapshot_cancel,
    .free = snapshot_free,
};

static const JobDriver load_driver = {
    .instance_size = sizeof(SnapshotJob),
    .job_type = JOB_TYPE_SNAPSHOT_LOAD,
    .run = snapshot_run,
    .cancel = snapshot_cancel,
    .free = snapshot_free,
};

static const JobDriver delete_driver = {
    .instance_size = sizeof(SnapshotJob),
    .job_type = JOB_TYPE_SNAPSHOT_DELETE,
    .run = snapshot_run,
    .cancel = snapshot_cancel,
    .free = snapshot_free,
};

static void snapshot_start(const JobDriver *drv, SnapOpKind op,
                           const char *job_id, const char *tag,
                           const char *vmstate, strList *devices,
                           GError **errp)
{
    SnapshotJob *s = job_create(job_id, drv, NULL, JOB_MANUAL_DISMISS,
                                NULL, NULL, errp);
    if (!s) {
        return;
    }
    s->op = op;
    s->tag = g_strdup(tag);
    s->vmstate = g_strdup(vmstate);
    s->devices = g_ptr_array_new_with_free_func(g_free);
    for (strList *l = devices; l; l = l->next) {
        g_ptr_array_add(s->devices, g_strdup(l->value));
    }
    job_start(&s->common);
    qmp_job_settle(job_id);
}

void qmp_snapshot_save(const char *job_id, const char *tag,
                       const char *vmstate, strList *devices, GError **errp)
{
    snapshot_start(&save_driver, OP_SAVE, job_id, tag, vmstate, devices,
                   errp);
}

void qmp_snapshot_load(const char *job_id, const char *tag,
                       const char *vmstate, strList *devices, GError **errp)
{
    snapshot_start(&load_driver, OP_LOAD, job_id, tag, vmstate, devices,
                   errp);
}

void qmp_snapshot_delete(const char *job_id, const char *tag,
                         strList *devices, GError **errp)
{
    snapshot_start(&delete_driver, OP_DELETE, job_id, tag, NULL, devices,
                   errp);
}
