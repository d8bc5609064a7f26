/*
 * x-strata-machine-snapshot and x-strata-machine-restore: a whole
 * machine's state (guest RAM, and the disks as external snapshots) saved
 * to a file and put back, each as one job (docs/migration.md "Machine
 * snapshot", with the same recipe in plain QEMU commands).
 *
 * A snapshot runs these steps, each named in the job's error if it fails:
 *   check        nodes, RAM blocks and arguments against the daemon's state
 *   file         a new file beside the target (or the fdset's descriptor)
 *   overlays     the new overlay images created and opened, drained
 *   transaction  the nodes drained, the overlays put on them: all or none
 *   ram          the RAM and the device state streams written, synced,
 *                renamed over the target (a back end that fails its
 *                stream fails this step)
 * and then releases the disks: requests held back since the transaction
 * started go to the overlays.
 *
 * A live snapshot ('live': true) writes the RAM while the guest runs:
 *   check, file, overlays   as above, the guest running
 *   passes       the dirty logs started, the RAM written pass after pass
 *                (migration/live-save.c, as a live migrate), until the
 *                pages left are few
 *   (ready)      the job goes "ready": the monitor pauses its guest,
 *                flushes its dirty marks and says job-complete
 *   transaction  as above, while the run writes the last pages
 *   ram          the last dirty pages, the bitmaps, the device state,
 *                fdatasync, the rename
 * and the hold ends; the downtime (ready to here) is in query-jobs.  Why
 * ready + job-complete rather than migrate's pre-switchover +
 * migrate-continue: the save is a job, not a migration (query-migrate
 * does not show it), and "ready, say job-complete to switch over" is what
 * mirror's jobs already mean to a QEMU user; the status stays in
 * query-jobs for a monitor that reconnects.  A failure at any step undoes the steps
 * before it (the overlays come off again, the files this job created are
 * removed), so the disks and the previous state file are as they were.
 * That is why new requests stay held back until the end: an overlay taken
 * off again must not have been written.
 *
 * A restore:
 *   check        nodes, snapshot nodes, arguments
 *   file         the state file read and matched with the memory backends
 *                (ids and sizes), nothing written yet
 *   overlays     new empty overlays created on the snapshot nodes, drained
 *   disks        the nodes drained, the overlays put in their places, all
 *                or none
 *   ram          the RAM loaded, then the device state streams handed to
 *                their back ends; on failure the disks go back
 * and then releases the disks and drops the nodes it replaced (their
 * files are left as they are).
 *
 * Why jobs: a VM monitor already drives snapshot-save and snapshot-load
 * as jobs; a job reports progress (RAM bytes) in query-jobs, keeps its
 * error until job-dismiss (a monitor that reconnects still learns how it
 * ended, an event would be lost), and job-cancel stops a long save and
 * undoes it.  The saves and loads use strata/migrate.h, the threads that
 * `migrate` uses.
 *
 * Device state: 'devices' names registered streams (x-strata-device-state-
 * add); without it every registered stream goes, as with migrate and
 * migrate-incoming, so a monitor that registers its back ends needs no
 * second list.  A restore hands a stream of the file only to a back end
 * registered under its id (and named in 'devices' if given); the others
 * are reported, as migrate-incoming does, and left in the file.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "transaction.h"
#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/device-state.h"
#include "strata/error.h"
#include "strata/fdset.h"
#include "strata/job.h"
#include "strata/loop.h"
#include "strata/mapped-ram.h"
#include "strata/migrate.h"
#include "strata/ram-block.h"
#include "qapi-commands.h"
#include "job-info-hook.h"
#include "job-settle.h"
#include "machine-snapshot.h"

#define DEFAULT_CHANNELS 2
#define DEFAULT_DOWNTIME_LIMIT 300      /* ms, as migrate's */
#define MAX_DOWNTIME_LIMIT 2000000      /* ms, as migrate's */
#define PROGRESS_NS (50 * 1000 * 1000)

/* One disk's arguments, copied from the command's. */
typedef struct DiskArg {
    char *device;               /* snapshot: as blockdev-snapshot-sync */
    char *node_name;
    char *base_name;            /* restore: snapshot-node */
    char *overlay_file;
    char *overlay_node_name;
    char *format;
    bool has_mode;
    NewImageMode mode;
} DiskArg;

/* One disk while the job runs. */
typedef struct Disk {
    BlockNode *node;            /* snapshotted / in the VM's place; ref */
    BlockNode *base;            /* restore: the snapshot node; ref */
    BlockNode *overlay;         /* the new overlay; ref */
    char *created;              /* overlay file this job made, or NULL */
    bool node_drained, base_drained, overlay_drained;
    bool swapped;               /* restore: overlay in node's place */
    bool was_rw;                /* snapshot: node writable before */
} Disk;

typedef struct MachineJob {
    Job common;
    bool restore;
    char *file;
    DiskArg *args;
    unsigned nb_disks;
    GPtrArray *ram_ids;         /* char *; NULL: all blocks */
    GPtrArray *dev_ids;         /* char *; NULL: all registered streams */
    unsigned channels;
    bool direct_io;
    uint64_t max_bandwidth;
    bool live;
    uint64_t downtime_limit_ms;

    /* while it runs */
    Disk *disks;
    GPtrArray *rbs;             /* RamBlock *, referenced */
    MrBlock *blocks;            /* what to save or load into */
    unsigned nb_blocks;
    int fd;
    int *chan_fds;
    unsigned nb_fds;            /* chan_fds opened so far */
    char *tmp_path;             /* ours to remove until the run takes it */
    MigRun *run;
    bool run_done;
    bool ram_loaded;            /* restore: every page loaded (end_run) */
    bool waiting;               /* in a plain yield, not a job sleep */
    GError *run_err;
    uint64_t progress;
    DsSet *devstate;            /* the streams taken from the registry */
    bool ds_taken;              /* ds_registry_end owed */

    /* a live snapshot */
    RamBlock **logged;          /* blocks whose dirty log this job started */
    unsigned nb_logged;
    bool at_switchover;         /* the passes are done: the run waits */
    bool complete_asked;        /* job-complete: the guest is paused */
    int64_t ready_ns;           /* when it asked for the pause */
    int64_t downtime_ms;        /* ready to the end of the hold; -1: none */
} MachineJob;

/* One machine job at a time: they use the same RAM and maybe the nodes. */
static MachineJob *running_job;

const char *machine_snapshot_running_job(void)
{
    return running_job ? running_job->common.id : NULL;
}

/* ---- errors ---- */

/* The job's error: the step, the cause, and the state it leaves. */
static int step_failed(GError **errp, const char *step, GError *cause,
                       const char *state)
{
    error_setg(errp, "step '%s' failed: %s; %s", step,
               cause ? cause->message : "cancelled", state);
    if (cause) {
        g_error_free(cause);
    }
    return -EIO;
}

/* ---- RAM blocks ---- */

/* A block whose memory the VM monitor shrank would fault (SIGBUS). */
static bool ram_block_readable(RamBlock *rb, GError **errp)
{
    struct stat st;

    if (rb->fd >= 0 && fstat(rb->fd, &st) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size < rb->size) {
        error_setg(errp, "RAM block '%s' cannot be read: its memory is %"
                   PRIu64 " bytes, the block %" PRIu64 " (did the VM "
                   "monitor shrink it?)", rb->id, (uint64_t)st.st_size,
                   rb->size);
        return false;
    }
    return true;
}

static void add_block(MachineJob *s, RamBlock *rb)
{
    ram_block_ref(rb);
    g_ptr_array_add(s->rbs, rb);
}

/* Snapshot: the blocks named (default all), readable. */
static bool resolve_ram(MachineJob *s, GError **errp)
{
    if (!s->ram_ids) {
        for (RamBlock *rb = ram_block_first(); rb; rb = ram_block_next(rb)) {
            add_block(s, rb);
        }
    } else {
        for (guint i = 0; i < s->ram_ids->len; i++) {
            const char *id = s->ram_ids->pdata[i];
            RamBlock *rb = ram_block_find(id);
            if (!rb) {
                error_setg(errp, "No memory backend has the RAM block '%s'",
                           id);
                return false;
            }
            for (guint k = 0; k < i; k++) {
                if (!strcmp(s->ram_ids->pdata[k], id)) {
                    error_setg(errp, "RAM block '%s' is named twice", id);
                    return false;
                }
            }
            add_block(s, rb);
        }
    }
    if (s->rbs->len == 0) {
        error_setg(errp, "There is no RAM to save: add a memory backend "
                   "(object-add memory-backend-memfd or -file) first");
        return false;
    }
    for (guint i = 0; i < s->rbs->len; i++) {
        if (!ram_block_readable(s->rbs->pdata[i], errp)) {
            return false;
        }
    }
    s->nb_blocks = s->rbs->len;
    s->blocks = g_new0(MrBlock, s->nb_blocks);
    for (guint i = 0; i < s->rbs->len; i++) {
        RamBlock *rb = s->rbs->pdata[i];
        s->blocks[i].id = rb->id;
        s->blocks[i].used = rb->size;
        s->blocks[i].host = rb->host;
    }
    return true;
}

/*
 * Restore: every RAM block of the file must have a writable memory
 * backend of its id and size (a machine restore that would leave one out
 * is refused), and the file must hold nothing strata cannot load.
 */
static bool match_ram(MachineJob *s, MrFileInfo *info, GError **errp)
{
    if (info->unread->len) {
        error_setg(errp, "'%s' holds device state strata cannot load ('%s')",
                   s->file, (char *)info->unread->pdata[0]);
        return false;
    }
    s->nb_blocks = info->nb_blocks;
    s->blocks = g_new0(MrBlock, s->nb_blocks);
    for (unsigned i = 0; i < info->nb_blocks; i++) {
        MrBlock *fb = &info->blocks[i];
        RamBlock *rb = ram_block_find(fb->id);
        if (!rb) {
            error_setg(errp, "RAM block '%s' of '%s' has no memory backend",
                       fb->id, s->file);
            return false;
        }
        if (rb->size != fb->used) {
            /* QEMU's words for the same mismatch */
            error_setg(errp, "Length mismatch: %s: 0x%" PRIx64 " in != 0x%"
                       PRIx64, fb->id, fb->used, rb->size);
            return false;
        }
        if (rb->readonly) {
            error_setg(errp, "RAM block '%s' is read-only", rb->id);
            return false;
        }
        if (!ram_block_readable(rb, errp)) {
            return false;
        }
        add_block(s, rb);
        s->blocks[i].id = rb->id;
        s->blocks[i].used = rb->size;
        s->blocks[i].host = rb->host;
        s->blocks[i].has_fd = rb->fd >= 0;
        s->blocks[i].fd = rb->fd;
    }
    return true;
}

/* ---- the state file ---- */

static bool open_channels(MachineJob *s, const char *path, int acc,
                          GError **errp)
{
    s->chan_fds = g_new0(int, s->channels);
    for (unsigned i = 0; i < s->channels; i++) {
        int fd = open(path, acc | O_CLOEXEC | (s->direct_io ? O_DIRECT : 0));
        if (fd < 0) {
            if (errno == EINVAL && s->direct_io) {
                error_setg(errp, "Could not open '%s': filesystem does not "
                           "support O_DIRECT", s->file);
            } else {
                error_setg_errno(errp, errno, "Could not open '%s'",
                                 s->file);
            }
            return false;
        }
        s->chan_fds[s->nb_fds++] = fd;
    }
    return true;
}

/*
 * The stream descriptor and one per channel (O_DIRECT is a flag of the
 * open file, so each channel opens the file again; a fdset member is
 * reopened through /proc).  A save to a path goes to a new file beside it.
 */
static bool open_file(MachineJob *s, bool save, GError **errp)
{
    int acc = save ? O_WRONLY : O_RDONLY;
    g_autofree char *proc = NULL;
    const char *path = s->file;

    if (fdset_is_fdset_name(s->file)) {
        s->fd = fdset_open(s->file, acc, errp);
        if (s->fd < 0) {
            return false;
        }
        proc = g_strdup_printf("/proc/self/fd/%d", s->fd);
        path = proc;
    } else if (save) {
        s->tmp_path = g_strdup_printf("%s.strata-XXXXXX", s->file);
        s->fd = g_mkstemp_full(s->tmp_path, O_RDWR | O_CLOEXEC, 0600);
        if (s->fd < 0) {
            error_setg_errno(errp, errno, "Could not create '%s'", s->file);
            g_free(s->tmp_path);
            s->tmp_path = NULL;
            return false;
        }
        path = s->tmp_path;
    } else {
        s->fd = open(s->file, O_RDONLY | O_CLOEXEC);
        if (s->fd < 0) {
            error_setg_errno(errp, errno, "Could not open '%s'", s->file);
            return false;
        }
    }
    if (lseek(s->fd, 0, SEEK_END) < 0) {
        error_setg(errp, "'%s' is not seekable", s->file);
        return false;
    }
    return open_channels(s, path, acc, errp);
}

static void close_file(MachineJob *s)
{
    for (unsigned i = 0; i < s->nb_fds; i++) {
        close(s->chan_fds[i]);
    }
    g_free(s->chan_fds);
    s->chan_fds = NULL;
    s->nb_fds = 0;
    if (s->fd >= 0) {
        fdset_close(s->fd);
        s->fd = -1;
    }
    if (s->tmp_path) {
        unlink(s->tmp_path);
        g_free(s->tmp_path);
        s->tmp_path = NULL;
    }
}

/* ---- the save or load, in strata/migrate.h's threads ---- */

static void run_done(void *opaque, const GError *err)
{
    MachineJob *s = opaque;

    s->run_done = true;
    if (err) {
        s->run_err = g_error_copy(err);
    }
    if (s->waiting) {
        co_wake(s->common.co);
    } else {
        job_enter(&s->common);
    }
}

static void update_progress(MachineJob *s)
{
    uint64_t done = atomic_load(&mig_run_stats(s->run)->done_bytes);

    if (done > s->progress) {
        job_progress_update(&s->common, done - s->progress);
        s->progress = done;
    }
    if (s->live && !s->restore) {
        /*
         * Every pass counts, so the total grows with the passes: what is
         * left is the current pass's rest (at the switchover: the dirty
         * bytes the last pass will write), as mirror's jobs count.
         */
        job_progress_set_remaining(&s->common, atomic_load(
            &mig_run_live_stats(s->run)->remaining));
    }
}

/*
 * The new file, complete and synced, replaces the target, and the rename
 * is made durable: from here on the snapshot stands (a crash before it
 * leaves the previous file; the disks' overlays are then unused files).
 */
static bool commit_file(MachineJob *s, GError **errp)
{
    g_autofree char *dir = g_path_get_dirname(s->file);
    int fd;

    if (rename(s->tmp_path, s->file) < 0) {
        error_setg_errno(errp, errno, "Could not rename '%s' to '%s'",
                         s->tmp_path, s->file);
        return false;
    }
    g_free(s->tmp_path);
    s->tmp_path = NULL;
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) < 0) {
        /* renamed already: the file is whole, only its name may not last */
        warn_print("x-strata-machine-snapshot: could not flush directory "
                   "'%s': %s", dir, g_strerror(errno));
    }
    if (fd >= 0) {
        close(fd);
    }
    return true;
}

/* Streams of the file no back end took: said, as migrate-incoming does. */
static void report_unread(GPtrArray *unread)
{
    if (!unread || !unread->len) {
        return;
    }
    g_autoptr(GString) names = g_string_new(NULL);
    for (guint i = 0; i < unread->len; i++) {
        g_string_append_printf(names, "%s%s", i ? ", " : "",
                               (char *)unread->pdata[i]);
    }
    warn_print("x-strata-machine-restore: device state not read: %s",
               names->str);
}

/* Takes the streams of 'devices' (default all registered) from the
 * registry for this job; they are its until machine_run ends. */
static bool take_devices(MachineJob *s, GError **errp)
{
    if (!ds_registry_begin_ids(s->restore, s->restore
                               ? "x-strata-machine-restore"
                               : "x-strata-machine-snapshot",
                               s->common.id, s->dev_ids, &s->devstate,
                               errp)) {
        return false;
    }
    s->ds_taken = true;
    return true;
}

/* Restore: every stream named in 'devices' must be in the file. */
static bool match_devices(MachineJob *s, MrFileInfo *info, GError **errp)
{
    for (guint i = 0; s->dev_ids && i < s->dev_ids->len; i++) {
        const char *id = s->dev_ids->pdata[i];
        bool found = false;
        for (guint k = 0; k < info->states->len && !found; k++) {
            MrDevState *st = info->states->pdata[k];
            found = strcmp(st->id, id) == 0;
        }
        if (!found) {
            error_setg(errp, "'%s' holds no device state '%s'", s->file, id);
            return false;
        }
    }
    return true;
}

/* Live: the passes are done, the run waits for mig_run_continue. */
static void run_at_switchover(void *opaque)
{
    MachineJob *s = opaque;

    s->at_switchover = true;
    if (!s->waiting) {
        job_enter(&s->common);
    }
}

/* The save or load starts in strata/migrate.h's threads. */
static void start_run(MachineJob *s, bool save)
{
    MigSpec spec = {
        .target = { .fd = s->fd, .chan_fds = s->chan_fds,
                    .nb_chan = s->channels, .offset = 0 },
        .params = { .channels = s->channels, .direct_io = s->direct_io,
                    .max_bandwidth = save ? s->max_bandwidth : 0,
                    .devstate = s->devstate },
        .blocks = s->blocks,
        .nb_blocks = s->nb_blocks,
        /* the rename is this job's commit point: done below, not there */
        .done = run_done,
        .opaque = s,
    };
    uint64_t total = 0;

    if (save && s->live) {
        spec.live = true;
        spec.ram = (RamBlock **)s->rbs->pdata;
        spec.downtime_limit_ms = s->downtime_limit_ms;
        spec.pre_switchover = run_at_switchover;
    }
    for (unsigned i = 0; i < s->nb_blocks; i++) {
        total += s->blocks[i].used;
    }
    job_progress_set_remaining(&s->common, total);
    s->run = save ? mig_run_save(&spec) : mig_run_load(&spec);
}

/*
 * Waits, with progress, until the run ends, the job is cancelled, or
 * (@switchover) a live save's passes are done.
 */
static void coroutine_fn wait_run(MachineJob *s, bool switchover)
{
    while (!s->run_done && !job_is_cancelled(&s->common) &&
           !(switchover && s->at_switchover)) {
        job_sleep_ns(&s->common, PROGRESS_NS);
        update_progress(s);
    }
}

/*
 * Ends the run: stops it first if it has not ended (a cancel), or
 * whether or not it has if @give_up (a live save whose transaction
 * failed: its file must not replace the target); a stopped run counts as
 * cancelled, and the run removes nothing (the job's close_file does).
 * Returns false with *errp set (NULL cause: cancelled).  *touched: guest
 * pages were written (a load that failed part-way).  A save that
 * succeeded is renamed over the target.
 */
static bool coroutine_fn end_run(MachineJob *s, bool save, bool give_up,
                                 bool *touched, GError **errp)
{
    if (give_up || !s->run_done) {
        mig_run_cancel(s->run);
    }
    if (!s->run_done) {
        /* cancelled: job sleeps return at once now, so wait plainly */
        s->waiting = true;
        while (!s->run_done) {
            co_yield();
        }
        s->waiting = false;
    }
    update_progress(s);
    *touched = !save && atomic_load(&mig_run_stats(s->run)->done_bytes) > 0;
    s->ram_loaded = !save && mig_run_ram_loaded(s->run);
    if (!save) {
        report_unread(mig_run_unread(s->run));
    }
    bool cancelled = mig_run_cancelled(s->run);
    mig_run_free(s->run);
    s->run = NULL;
    if (s->run_err || cancelled) {
        if (cancelled) {
            g_clear_error(&s->run_err);
        }
        *errp = s->run_err;
        s->run_err = NULL;
        return false;
    }
    return !s->tmp_path || commit_file(s, errp);
}

/* The save or load, to its end. */
static bool coroutine_fn run_ram(MachineJob *s, bool save, bool *touched,
                                 GError **errp)
{
    start_run(s, save);
    wait_run(s, false);
    return end_run(s, save, false, touched, errp);
}

/* ---- disks ---- */

static void disk_drain(BlockNode *bs, bool *drained)
{
    if (bs && !*drained) {
        node_drain_begin(bs);
        *drained = true;
    }
}

static void disk_undrain(BlockNode *bs, bool *drained)
{
    if (*drained) {
        node_drain_end(bs);
        *drained = false;
    }
}

static bool name_taken_twice(MachineJob *s, unsigned i, GError **errp)
{
    for (unsigned k = 0; k < i; k++) {
        if (s->disks[k].node == s->disks[i].node) {
            error_setg(errp, "Node '%s' is named twice in 'disks'",
                       node_get_name(s->disks[i].node));
            return true;
        }
        if (!strcmp(s->args[k].overlay_file, s->args[i].overlay_file)) {
            error_setg(errp, "Overlay file '%s' is named twice in 'disks'",
                       s->args[i].overlay_file);
            return true;
        }
    }
    return false;
}

static bool resolve_disks(MachineJob *s, GError **errp)
{
    s->disks = g_new0(Disk, s->nb_disks);
    for (unsigned i = 0; i < s->nb_disks; i++) {
        DiskArg *a = &s->args[i];
        Disk *d = &s->disks[i];

        d->node = txn_lookup_node(a->device, a->node_name, errp);
        if (!d->node) {
            return false;
        }
        node_ref(d->node);
        d->was_rw = !node_is_read_only(d->node);
        if (name_taken_twice(s, i, errp)) {
            return false;
        }
        if (!s->restore) {
            continue;
        }
        d->base = txn_lookup_node(NULL, a->base_name, errp);
        if (!d->base) {
            return false;
        }
        node_ref(d->base);
        uint64_t perm, shared;
        node_get_cumulative_perm(d->base, &perm, &shared);
        if (perm & BLK_PERM_WRITE) {
            error_setg(errp, "Snapshot node '%s' is written by another user: "
                       "a restore needs the image the snapshot left "
                       "unchanged", a->base_name);
            return false;
        }
    }
    return true;
}

/*
 * Creates (unless mode=existing) and opens every new overlay, as
 * blockdev-snapshot-sync does, drained and on top of nothing yet.  A file
 * that did not exist before is this job's: removed if the job fails.
 */
static bool coroutine_fn create_overlays(MachineJob *s, GError **errp)
{
    for (unsigned i = 0; i < s->nb_disks; i++) {
        DiskArg *a = &s->args[i];
        Disk *d = &s->disks[i];
        BlockNode *below = s->restore ? d->base : d->node;
        BlockdevSnapshotSync sync = {
            .snapshot_file = a->overlay_file,
            .snapshot_node_name = a->overlay_node_name,
            .format = a->format,
            .has_mode = a->has_mode,
            .mode = a->mode,
        };
        struct stat st;
        bool existed = stat(a->overlay_file, &st) == 0;

        d->overlay = snapshot_open_new_overlay(&sync, below, errp);
        if (!existed && (!a->has_mode || a->mode != NEW_IMAGE_MODE_EXISTING)
            && stat(a->overlay_file, &st) == 0) {
            d->created = g_strdup(a->overlay_file);
        }
        if (!d->overlay) {
            return false;
        }
        /* on a read-only snapshot node it opened read-only: the VM writes */
        if (s->restore && node_is_read_only(d->overlay) &&
            !node_reopen(d->overlay, NULL, false, errp)) {
            return false;
        }
        disk_drain(d->overlay, &d->overlay_drained);
    }
    return true;
}

/* The snapshot's transaction: blockdev-snapshot of each overlay. */
static bool coroutine_fn snapshot_disks(MachineJob *s, GError **errp)
{
    g_autofree TransactionActionList *list =
        g_new0(TransactionActionList, s->nb_disks);
    g_autofree TransactionAction *actions =
        g_new0(TransactionAction, s->nb_disks);
    g_autofree BlockdevSnapshot *data = g_new0(BlockdevSnapshot, s->nb_disks);

    for (unsigned i = 0; i < s->nb_disks; i++) {
        data[i].node = (char *)node_get_name(s->disks[i].node);
        data[i].overlay = (char *)node_get_name(s->disks[i].overlay);
        actions[i].type = TRANSACTION_ACTION_KIND_BLOCKDEV_SNAPSHOT;
        actions[i].u.blockdev_snapshot.data = &data[i];
        list[i].value = &actions[i];
        list[i].next = i + 1 < s->nb_disks ? &list[i + 1] : NULL;
    }
    return s->nb_disks == 0 || txn_run(list, NULL, errp);
}

/* Undo the transaction: each node takes its users back, writable again. */
static bool unsnapshot_disks(MachineJob *s, GError **errp)
{
    bool ok = true;

    for (unsigned i = 0; i < s->nb_disks; i++) {
        Disk *d = &s->disks[i];
        GError *local = NULL;
        BlockChild *backing = node_backing_child(d->overlay);

        if (!backing || child_node(backing) != d->node) {
            continue;       /* never put on (or moved since) */
        }
        /* The transaction made it read-only; the users need to write. */
        if (d->was_rw && node_is_read_only(d->node) &&
            !node_reopen(d->node, NULL, false, &local)) {
            /* the overlay stays: the disk is usable, on it */
        } else if (node_replace(d->overlay, d->node, &local)) {
            child_detach(backing, NULL);
            node_refresh_filename(d->overlay);
            node_refresh_filename(d->node);
            continue;
        }
        if (ok) {
            error_setg(errp, "node '%s' stays on its new overlay: %s",
                       node_get_name(d->node), local->message);
        }
        g_error_free(local);
        g_free(d->created);     /* in use: its file stays */
        d->created = NULL;
        ok = false;
    }
    return ok;
}

/* Restore: every overlay on its snapshot node takes its node's users. */
static bool swap_disks(MachineJob *s, GError **errp)
{
    for (unsigned i = 0; i < s->nb_disks; i++) {
        Disk *d = &s->disks[i];
        BlockChild *c = node_attach_child(d->overlay, d->base, "backing",
                                          CHILD_ROLE_COW, errp);
        if (!c) {
            return false;
        }
        if (!node_replace(d->node, d->overlay, errp)) {
            child_detach(c, NULL);
            return false;
        }
        node_refresh_filename(d->overlay);
        d->swapped = true;
    }
    return true;
}

/* Restore undone: the nodes take their users back. */
static bool unswap_disks(MachineJob *s, GError **errp)
{
    bool ok = true;

    for (unsigned i = 0; i < s->nb_disks; i++) {
        Disk *d = &s->disks[i];
        GError *local = NULL;

        if (!d->swapped) {
            continue;
        }
        if (!node_replace(d->overlay, d->node, &local)) {
            if (ok) {
                error_setg(errp, "node '%s' stays replaced by its new "
                           "overlay: %s", node_get_name(d->node),
                           local->message);
            }
            g_error_free(local);
            g_free(d->created);
            d->created = NULL;
            ok = false;
            continue;
        }
        child_detach(node_backing_child(d->overlay), NULL);
        node_refresh_filename(d->node);
        d->swapped = false;
    }
    return ok;
}

/* Ends every drain and drops the job's nodes; removes what it created
 * unless the job succeeded. */
static void release_disks(MachineJob *s, bool success)
{
    for (unsigned i = 0; s->disks && i < s->nb_disks; i++) {
        Disk *d = &s->disks[i];
        disk_undrain(d->overlay, &d->overlay_drained);
        disk_undrain(d->base, &d->base_drained);
        disk_undrain(d->node, &d->node_drained);
    }
    for (unsigned i = 0; s->disks && i < s->nb_disks; i++) {
        Disk *d = &s->disks[i];
        if (d->overlay) {
            node_unref(d->overlay);     /* closes it if nothing uses it */
        }
        if (d->created && !success) {
            unlink(d->created);
        }
        g_free(d->created);
        if (d->base) {
            node_unref(d->base);
        }
        if (d->node) {
            node_unref(d->node);
        }
    }
    g_free(s->disks);
    s->disks = NULL;
}

static void release_ram(MachineJob *s)
{
    for (guint i = 0; s->rbs && i < s->rbs->len; i++) {
        ram_block_unref(s->rbs->pdata[i]);
    }
    if (s->rbs) {
        g_ptr_array_set_size(s->rbs, 0);
    }
    g_free(s->blocks);
    s->blocks = NULL;
}

/* ---- the live snapshot ---- */

/*
 * Every block with a dirty log is tracked from now on; the others are
 * written whole after the pause (as a live migrate does).
 */
static void start_logs(MachineJob *s)
{
    s->logged = g_new0(RamBlock *, s->rbs->len);
    for (guint i = 0; i < s->rbs->len; i++) {
        RamBlock *rb = s->rbs->pdata[i];
        if (ram_block_has_dirty_log(rb) && ram_block_log_start(rb, NULL)) {
            s->logged[s->nb_logged++] = rb;
        }
    }
}

static void stop_logs(MachineJob *s)
{
    for (unsigned i = 0; i < s->nb_logged; i++) {
        ram_block_log_stop(s->logged[i]);
    }
    g_free(s->logged);
    s->logged = NULL;
    s->nb_logged = 0;
}

/* job-complete in ready: the monitor has paused its guest. */
static void machine_complete(Job *job, GError **errp)
{
    MachineJob *s = (MachineJob *)job;

    (void)errp;
    /* a second job-complete changes nothing, as mirror's */
    s->complete_asked = true;
    if (!s->waiting) {
        job_enter(job);
    }
}

/*
 * After the overlays: the passes with the guest running, the pause, then
 * the steps of a stopped snapshot with only the last pages left to write.
 */
/*
 * Step 'ram' of a snapshot failed after the transaction: the overlays come
 * off again, and the error says whether they did.
 */
static int coroutine_fn ram_step_failed(MachineJob *s, GError *err,
                                        GError **errp)
{
    GError *undo = NULL;

    if (unsnapshot_disks(s, &undo)) {
        return step_failed(errp, "ram", err, "the disks are back on their "
                           "images and the state file is unchanged");
    }
    g_autofree char *state = g_strdup_printf(
        "the state file is unchanged, but %s", undo->message);
    g_error_free(undo);
    return step_failed(errp, "ram", err, state);
}

static int coroutine_fn do_live(MachineJob *s, GError **errp)
{
    static const char unchanged[] = "the disks and the state file are "
                                    "unchanged";
    GError *err = NULL;
    bool touched;

    start_logs(s);
    start_run(s, true);
    wait_run(s, true);
    if (!s->at_switchover || job_is_cancelled(&s->common)) {
        end_run(s, true, true, &touched, &err);
        return step_failed(errp, "passes", err, unchanged);
    }
    /* The monitor sees "ready", pauses its guest and says job-complete. */
    s->ready_ns = clock_ns();
    job_transition_to_ready(&s->common);
    while (!s->complete_asked && !job_is_cancelled(&s->common) &&
           !s->run_done) {
        job_sleep_ns(&s->common, PROGRESS_NS);
        update_progress(s);
    }
    if (!s->complete_asked || job_is_cancelled(&s->common)) {
        end_run(s, true, true, &touched, &err);
        return step_failed(errp, "ready", err, unchanged);
    }
    /*
     * The last pages are written (in the run's threads) while the disks'
     * transaction runs here: the guest is paused, so neither changes what
     * the other saves, and the pause lasts the longer of the two instead
     * of their sum.  If the transaction fails, the run is stopped.
     */
    mig_run_continue(s->run);
    for (unsigned i = 0; i < s->nb_disks; i++) {
        disk_drain(s->disks[i].node, &s->disks[i].node_drained);
    }
    if (job_is_cancelled(&s->common) || !snapshot_disks(s, &err)) {
        GError *stop = NULL;
        end_run(s, true, true, &touched, &stop);
        g_clear_error(&stop);       /* the transaction's error is the news */
        return step_failed(errp, "transaction", err, unchanged);
    }
    wait_run(s, false);
    if (!end_run(s, true, false, &touched, &err)) {
        return ram_step_failed(s, err, errp);
    }
    return 0;
}

/* ---- the two jobs ---- */

static int coroutine_fn do_snapshot(MachineJob *s, GError **errp)
{
    GError *err = NULL;
    bool touched;

    if (!resolve_ram(s, &err) || !resolve_disks(s, &err) ||
        !take_devices(s, &err)) {
        return step_failed(errp, "check", err, "nothing was changed");
    }
    if (!open_file(s, true, &err)) {
        return step_failed(errp, "file", err, "nothing was changed");
    }
    if (!create_overlays(s, &err)) {
        return step_failed(errp, "overlays", err, "the disks and the state "
                           "file are unchanged");
    }
    if (s->live) {
        return do_live(s, errp);
    }
    /* Held back from here until the end: see the top of the file. */
    for (unsigned i = 0; i < s->nb_disks; i++) {
        disk_drain(s->disks[i].node, &s->disks[i].node_drained);
    }
    if (job_is_cancelled(&s->common) || !snapshot_disks(s, &err)) {
        return step_failed(errp, "transaction", err, "the disks and the "
                           "state file are unchanged");
    }
    if (!run_ram(s, true, &touched, &err)) {
        return ram_step_failed(s, err, errp);
    }
    return 0;
}

static int coroutine_fn do_restore(MachineJob *s, GError **errp)
{
    GError *err = NULL;
    MrFileInfo *info;
    bool touched = false;

    if (!resolve_disks(s, &err)) {
        return step_failed(errp, "check", err, "nothing was changed");
    }
    if (!open_file(s, false, &err)) {
        return step_failed(errp, "file", err, "nothing was changed");
    }
    /* Everything about the file is checked before anything changes. */
    info = mr_file_parse(s->fd, 0, &err);
    if (!info || !match_ram(s, info, &err) ||
        !match_devices(s, info, &err) || !take_devices(s, &err)) {
        mr_file_info_free(info);
        return step_failed(errp, "file", err, "nothing was changed");
    }
    mr_file_info_free(info);
    if (!create_overlays(s, &err)) {
        return step_failed(errp, "overlays", err, "nothing was changed");
    }
    for (unsigned i = 0; i < s->nb_disks; i++) {
        Disk *d = &s->disks[i];
        disk_drain(d->node, &d->node_drained);
        disk_drain(d->base, &d->base_drained);
    }
    if (job_is_cancelled(&s->common) || !swap_disks(s, &err)) {
        GError *undo = NULL;
        if (!unswap_disks(s, &undo)) {
            g_autofree char *state = g_strdup_printf(
                "guest memory is unchanged, but %s", undo->message);
            g_error_free(undo);
            return step_failed(errp, "disks", err, state);
        }
        return step_failed(errp, "disks", err, "nothing was changed");
    }
    if (!run_ram(s, false, &touched, &err)) {
        GError *undo = NULL;
        const char *mem = s->ram_loaded ? "guest memory holds the file's "
                                          "RAM"
                          : touched ? "guest memory is partly overwritten"
                                    : "guest memory is unchanged";
        g_autofree char *state = NULL;
        if (unswap_disks(s, &undo)) {
            state = g_strdup_printf("%s and the disks are as they were", mem);
        } else {
            state = g_strdup_printf("%s and %s", mem, undo->message);
            g_error_free(undo);
        }
        return step_failed(errp, "ram", err, state);
    }
    return 0;
}

static int coroutine_fn machine_run(Job *job, GError **errp)
{
    MachineJob *s = (MachineJob *)job;
    int ret;

    s->fd = -1;
    s->downtime_ms = -1;
    s->rbs = g_ptr_array_new();
    job_progress_set_remaining(job, 1);
    ret = s->restore ? do_restore(s, errp) : do_snapshot(s, errp);
    if (ret < 0 && job_is_cancelled(job)) {
        ret = -ECANCELED;
    }
    release_disks(s, ret == 0);
    if (s->live && ret == 0) {
        /* the hold has ended: the monitor may resume its guest */
        s->downtime_ms = (clock_ns() - s->ready_ns) / 1000000;
    }
    stop_logs(s);
    close_file(s);
    release_ram(s);
    if (s->ds_taken) {
        /* spent streams are closed, untouched ones stay registered */
        ds_registry_end(s->devstate);
        s->devstate = NULL;
        s->ds_taken = false;
    }
    if (running_job == s) {
        running_job = NULL;
    }
    return ret;
}

static void machine_free(Job *job)
{
    MachineJob *s = (MachineJob *)job;

    for (unsigned i = 0; i < s->nb_disks; i++) {
        DiskArg *a = &s->args[i];
        g_free(a->device);
        g_free(a->node_name);
        g_free(a->base_name);
        g_free(a->overlay_file);
        g_free(a->overlay_node_name);
        g_free(a->format);
    }
    g_free(s->args);
    if (s->ram_ids) {
        g_ptr_array_free(s->ram_ids, true);
    }
    if (s->dev_ids) {
        g_ptr_array_free(s->dev_ids, true);
    }
    if (s->rbs) {
        g_ptr_array_free(s->rbs, true);
    }
    g_free(s->file);
    if (running_job == s) {
        running_job = NULL;
    }
}

static const JobDriver snapshot_driver = {
    .instance_size = sizeof(MachineJob),
    .job_type = JOB_TYPE_X_STRATA_MACHINE_SNAPSHOT,
    .run = machine_run,
    .complete = machine_complete,
    .free = machine_free,
};

static const JobDriver restore_driver = {
    .instance_size = sizeof(MachineJob),
    .job_type = JOB_TYPE_X_STRATA_MACHINE_RESTORE,
    .run = machine_run,
    .free = machine_free,
};

/*
 * query-jobs (a hook of cmd-job.c's): a live snapshot's
 * x-strata-expected-downtime while it runs and x-strata-downtime once it
 * concluded without an error.
 */
static void machine_job_info(Job *job, JobInfo *info)
{
    MachineJob *s = (MachineJob *)job;

    if (job->driver != &snapshot_driver || !s->live) {
        return;
    }
    if (s->run) {
        info->has_x_strata_expected_downtime = true;
        info->x_strata_expected_downtime = (int64_t)atomic_load(
            &mig_run_live_stats(s->run)->expected_ms);
    }
    if (job->status == JOB_STATUS_CONCLUDED && s->downtime_ms >= 0) {
        info->has_x_strata_downtime = true;
        info->x_strata_downtime = s->downtime_ms;
    }
}

/* The argument checks that need no daemon state. */
static bool check_args(bool has_channels, int64_t channels,
                       bool has_max_bandwidth, int64_t max_bandwidth,
                       GError **errp)
{
    if (has_channels && (channels < 1 || channels > 255)) {
        error_setg(errp, "Parameter 'channels' expects a value between 1 "
                   "and 255");
        return false;
    }
    if (has_max_bandwidth && max_bandwidth < 0) {
        error_setg(errp, "Parameter 'max-bandwidth' expects a value of 0 "
                   "or more (bytes per second, 0 for no limit)");
        return false;
    }
    if (running_job) {
        error_setg(errp, "Machine snapshot job '%s' is still running",
                   running_job->common.id);
        return false;
    }
    MigrationInfo *mi = qmp_query_migrate(NULL);
    bool active = mi && mi->has_status &&
                  (mi->status == MIGRATION_STATUS_SETUP ||
                   mi->status == MIGRATION_STATUS_ACTIVE ||
                   mi->status == MIGRATION_STATUS_DEVICE ||
                   mi->status == MIGRATION_STATUS_CANCELLING);
    qapi_free_MigrationInfo(mi);
    if (active) {
        error_setg(errp, "There's a migration process in progress");
        return false;
    }
    return true;
}

static MachineJob *machine_create(const JobDriver *drv, const char *job_id,
                                  const char *file, bool has_channels,
                                  int64_t channels, bool has_direct_io,
                                  bool direct_io, strList *devices,
                                  GError **errp)
{
    MachineJob *s = job_create(job_id, drv, NULL, JOB_MANUAL_DISMISS, NULL,
                               NULL, errp);
    if (!s) {
        return NULL;
    }
    s->restore = drv == &restore_driver;
    s->file = g_strdup(file);
    s->channels = has_channels ? (unsigned)channels : DEFAULT_CHANNELS;
    s->direct_io = has_direct_io && direct_io;
    if (devices) {
        /* the generated code gives [] as NULL too: both mean "all" */
        s->dev_ids = g_ptr_array_new_with_free_func(g_free);
        for (strList *l = devices; l; l = l->next) {
            g_ptr_array_add(s->dev_ids, g_strdup(l->value));
        }
    }
    return s;
}

static void machine_start(MachineJob *s, const char *job_id)
{
    qmp_query_jobs_add_hook(machine_job_info);
    running_job = s;
    job_start(&s->common);
    qmp_job_settle(job_id);
}

void qmp_x_strata_machine_snapshot(const char *job_id, const char *file,
                                   BlockdevSnapshotSyncList *disks,
                                   strList *ram_blocks, strList *devices,
                                   bool has_channels, int64_t channels,
                                   bool has_direct_io, bool direct_io,
                                   bool has_max_bandwidth,
                                   int64_t max_bandwidth, bool has_live,
                                   bool live, bool has_downtime_limit,
                                   int64_t downtime_limit, GError **errp)
{
    MachineJob *s;
    unsigned n = 0;

    if (has_downtime_limit &&
        (downtime_limit < 0 || downtime_limit > MAX_DOWNTIME_LIMIT)) {
        /* migrate-set-parameters' words */
        error_setg(errp, "Parameter 'downtime-limit' expects an integer in "
                   "the range of 0 to (2000 * 1000) ms");
        return;
    }
    if (has_downtime_limit && !(has_live && live)) {
        error_setg(errp, "Parameter 'downtime-limit' applies to a live "
                   "snapshot only (live: true)");
        return;
    }
    if (!check_args(has_channels, channels, has_max_bandwidth,
                    max_bandwidth, errp)) {
        return;
    }
    s = machine_create(&snapshot_driver, job_id, file, has_channels,
                       channels, has_direct_io, direct_io, devices,
                       errp);
    if (!s) {
        return;
    }
    s->max_bandwidth = has_max_bandwidth ? (uint64_t)max_bandwidth : 0;
    s->live = has_live && live;
    s->downtime_limit_ms = has_downtime_limit ? (uint64_t)downtime_limit
                                              : DEFAULT_DOWNTIME_LIMIT;
    for (BlockdevSnapshotSyncList *l = disks; l; l = l->next) {
        n++;
    }
    s->args = g_new0(DiskArg, n);
    s->nb_disks = n;
    n = 0;
    for (BlockdevSnapshotSyncList *l = disks; l; l = l->next, n++) {
        BlockdevSnapshotSync *d = l->value;
        DiskArg *a = &s->args[n];
        a->device = g_strdup(d->device);
        a->node_name = g_strdup(d->node_name);
        a->overlay_file = g_strdup(d->snapshot_file);
        a->overlay_node_name = g_strdup(d->snapshot_node_name);
        a->format = g_strdup(d->format);
        a->has_mode = d->has_mode;
        a->mode = d->mode;
    }
    if (ram_blocks) {
        s->ram_ids = g_ptr_array_new_with_free_func(g_free);
        for (strList *l = ram_blocks; l; l = l->next) {
            g_ptr_array_add(s->ram_ids, g_strdup(l->value));
        }
    }
    machine_start(s, job_id);
}

void qmp_x_strata_machine_restore(const char *job_id, const char *file,
                                  XStrataMachineRestoreDiskList *disks,
                                  strList *devices, bool has_channels,
                                  int64_t channels, bool has_direct_io,
                                  bool direct_io, GError **errp)
{
    MachineJob *s;
    unsigned n = 0;

    if (!check_args(has_channels, channels, false, 0, errp)) {
        return;
    }
    s = machine_create(&restore_driver, job_id, file, has_channels, channels,
                       has_direct_io, direct_io, devices, errp);
    if (!s) {
        return;
    }
    for (XStrataMachineRestoreDiskList *l = disks; l; l = l->next) {
        n++;
    }
    s->args = g_new0(DiskArg, n);
    s->nb_disks = n;
    n = 0;
    for (XStrataMachineRestoreDiskList *l = disks; l; l = l->next, n++) {
        XStrataMachineRestoreDisk *d = l->value;
        DiskArg *a = &s->args[n];
        a->node_name = g_strdup(d->node_name);
        a->base_name = g_strdup(d->snapshot_node);
        a->overlay_file = g_strdup(d->overlay_file);
        a->overlay_node_name = g_strdup(d->overlay_node_name);
        a->format = g_strdup(d->format);
        a->has_mode = d->has_mode;
        a->mode = d->mode;
    }
    machine_start(s, job_id);
}
