/*
 * Migration over QMP, as QEMU 10 names it: capabilities, parameters,
 * migrate / migrate-incoming to a file, query-migrate, migrate_cancel,
 * the MIGRATION and MIGRATION_PASS events.  One migration at a time, in
 * either direction; it runs in threads (strata/migrate.h) and this file
 * keeps its status, its descriptors and the RAM blocks it holds.
 *
 * Unlike QEMU, strata-daemon restores without "-incoming defer", and may
 * restore again once a restore ended: a daemon outlives its VMs' restores.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "strata/device-state.h"
#include "strata/fdset.h"
#include "strata/loop.h"
#include "strata/migrate.h"
#include "strata/qmp-server.h"
#include "strata/ram-block.h"
#include "qapi-commands.h"
#include "qapi-events.h"
#include "machine-snapshot.h"
#include "migration-fds.h"

/* set by the program that runs the QMP server (qapi/migration-fds.h) */
static const MigrationNamedFds *named_fds;

void migration_set_named_fds(const MigrationNamedFds *fds)
{
    named_fds = fds;
}

#define DEFAULT_MAX_BANDWIDTH (128ull << 20)    /* QEMU's */
#define DEFAULT_DOWNTIME_LIMIT 300
#define DEFAULT_MULTIFD_CHANNELS 2

static struct {
    bool caps[MIGRATION_CAPABILITY__MAX];
    uint64_t max_bandwidth;
    uint64_t downtime_limit;
    uint8_t multifd_channels;
    bool direct_io;

    MigrationStatus status;
    bool incoming;              /* what the current/last one was */
    MigRun *run;
    DsSet *devstate;            /* the run's device state streams, or NULL */
    RamBlock **refs;
    unsigned nb_refs;
    int *fds;                   /* all descriptors opened for the run */
    unsigned nb_fds;
    uint64_t total;             /* RAM bytes */
    bool multifd;
    /* a live save (pause-before-switchover): the blocks it logs */
    bool live;
    RamBlock **logged;
    unsigned nb_logged;
    int64_t switchover_ns;      /* entered pre-switchover */
    MigLiveStats live_final;
    int64_t start_ns, setup_ns, pages_ns, end_ns;
    char *error_desc;
    strList *skipped;
    strList *unread;
    /* counters kept after the run is freed */
    MrStats final;
} mig = {
    .max_bandwidth = DEFAULT_MAX_BANDWIDTH,
    .downtime_limit = DEFAULT_DOWNTIME_LIMIT,
    .multifd_channels = DEFAULT_MULTIFD_CHANNELS,
};

static bool cap(MigrationCapability c)
{
    return mig.caps[c];
}

static void set_status(MigrationStatus s)
{
    mig.status = s;
    if (cap(MIGRATION_CAPABILITY_EVENTS)) {
        qapi_event_send_migration(s);
    }
}

static void send_pass(int64_t n)
{
    if (cap(MIGRATION_CAPABILITY_EVENTS)) {
        qapi_event_send_migration_pass(n);
    }
}

static bool is_active(void)
{
    switch (mig.status) {
    case MIGRATION_STATUS_SETUP:
    case MIGRATION_STATUS_ACTIVE:
    case MIGRATION_STATUS_DEVICE:
    case MIGRATION_STATUS_PRE_SWITCHOVER:
    case MIGRATION_STATUS_CANCELLING:
        return true;
    default:
        return false;
    }
}

/* ---- capabilities and parameters ---- */

void qmp_migrate_set_capabilities(MigrationCapabilityStatusList *capabilities,
                                  GError **errp)
{
    bool next[MIGRATION_CAPABILITY__MAX];

    if (is_active()) {
        error_setg(errp, "There's a migration process in progress");
        return;
    }
    memcpy(next, mig.caps, sizeof(next));
    for (MigrationCapabilityStatusList *l = capabilities; l; l = l->next) {
        next[l->value->capability] = l->value->state;
    }
    if (next[MIGRATION_CAPABILITY_MAPPED_RAM] &&
        next[MIGRATION_CAPABILITY_POSTCOPY_RAM]) {
        error_setg(errp, "Mapped-ram migration is incompatible with postcopy");
        return;
    }
    memcpy(mig.caps, next, sizeof(next));
}

MigrationCapabilityStatusList *qmp_query_migrate_capabilities(GError **errp)
{
    MigrationCapabilityStatusList *head = NULL, **tail = &head;

    for (int i = 0; i < MIGRATION_CAPABILITY__MAX; i++) {
        MigrationCapabilityStatusList *e = g_new0(MigrationCapabilityStatusList,
                                                  1);
        e->value = g_new0(MigrationCapabilityStatus, 1);
        e->value->capability = i;
        e->value->state = mig.caps[i];
        *tail = e;
        tail = &e->next;
    }
    return head;
}

void qmp_migrate_set_parameters(MigrateSetParameters *arg, GError **errp)
{
    if (arg->has_multifd_channels && arg->multifd_channels < 1) {
        /* QEMU 10 spells the name with an underscore here */
        error_setg(errp, "Parameter 'multifd_channels' expects a value "
                   "between 1 and 255");
        return;
    }
    if (arg->has_downtime_limit && arg->downtime_limit > 2000000) {
        error_setg(errp, "Parameter 'downtime_limit' expects an integer in "
                   "the range of 0 to (2000 * 1000) ms");
        return;
    }
    if (arg->has_max_bandwidth) {
        mig.max_bandwidth = arg->max_bandwidth;
    }
    if (arg->has_downtime_limit) {
        mig.downtime_limit = arg->downtime_limit;
    }
    if (arg->has_multifd_channels) {
        mig.multifd_channels = arg->multifd_channels;
    }
    if (arg->has_direct_io) {
        mig.direct_io = arg->direct_io;
    }
}

MigrationParameters *qmp_query_migrate_parameters(GError **errp)
{
    MigrationParameters *p = g_new0(MigrationParameters, 1);

    p->has_max_bandwidth = true;
    p->max_bandwidth = mig.max_bandwidth;
    p->has_downtime_limit = true;
    p->downtime_limit = mig.downtime_limit;
    p->has_multifd_channels = true;
    p->multifd_channels = mig.multifd_channels;
    p->has_direct_io = true;
    p->direct_io = mig.direct_io;
    return p;
}

/* ---- where to ---- */

typedef enum { DEST_PATH, DEST_FDSET, DEST_FD } DestKind;

typedef struct Dest {
    DestKind kind;
    char *name;                 /* path, "/dev/fdset/N" or the fd's name */
    uint64_t offset;
} Dest;

static bool parse_size(const char *s, uint64_t *v)
{
    char *end;
    uint64_t n;

    if (!g_ascii_isdigit(*s)) {
        return false;
    }
    errno = 0;
    n = g_ascii_strtoull(s, &end, 0);
    if (errno) {
        return false;
    }
    unsigned shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
    }
    if (*end || (shift && n > (UINT64_MAX >> shift))) {
        return false;
    }
    *v = n << shift;
    return true;
}

static bool parse_file(const char *spec, uint64_t offset, Dest *d,
                       GError **errp)
{
    d->offset = offset;
    d->kind = fdset_is_fdset_name(spec) ? DEST_FDSET : DEST_PATH;
    d->name = g_strdup(spec);
    return true;
}

static bool parse_dest(const char *uri, MigrationChannelList *channels,
                       bool incoming, Dest *d, GError **errp)
{
    if (!!uri == !!channels) {
        error_setg(errp, "need either 'uri' or 'channels' argument");
        return false;
    }
    if (channels) {
        /* QEMU 10's words, which differ between the two commands (the
         * only channel type strata has is "main") */
        if (channels->next && incoming) {
            error_setg(errp, "Channel list must have only one entry, for "
                       "type 'main'");
            return false;
        }
        if (channels->next) {
            error_setg(errp, "Channel list has more than one main entry");
            return false;
        }
        MigrationAddress *a = channels->value->addr;
        if (a->transport == MIGRATION_ADDRESS_TYPE_FILE) {
            return parse_file(a->u.file.filename, a->u.file.offset, d, errp);
        }
        /* QEMU turns uri "fd:NAME" into this channel: the same here */
        if (a->transport == MIGRATION_ADDRESS_TYPE_SOCKET &&
            a->u.socket.type == SOCKET_ADDRESS_TYPE_FD) {
            d->kind = DEST_FD;
            d->name = g_strdup(a->u.socket.u.fd.str);
            return true;
        }
        /* QEMU 10 refuses the other transports here with mapped-ram */
        error_setg(errp, "Migration requires seekable transport (e.g. "
                   "file)");
        return false;
    }
    if (g_str_has_prefix(uri, "file:")) {
        const char *spec = uri + 5;
        const char *comma = strrchr(spec, ',');
        uint64_t offset = 0;
        if (comma && g_str_has_prefix(comma + 1, "offset=")) {
            const char *num = comma + 1 + strlen("offset=");
            if (!parse_size(num, &offset)) {
                error_setg(errp, "file URI has bad offset %s: Invalid "
                           "argument", num);
                return false;
            }
            g_autofree char *path = g_strndup(spec, comma - spec);
            return parse_file(path, offset, d, errp);
        }
        return parse_file(spec, 0, d, errp);
    }
    if (g_str_has_prefix(uri, "fd:")) {
        d->kind = DEST_FD;
        d->name = g_strdup(uri + 3);
        return true;
    }
    static const char *const streams[] = {
        "tcp:", "unix:", "exec:", "rdma:", "vsock:", NULL
    };
    for (int i = 0; streams[i]; i++) {
        if (g_str_has_prefix(uri, streams[i])) {
            error_setg(errp, "Migration requires seekable transport (e.g. "
                       "file)");
            return false;
        }
    }
    error_setg(errp, "unknown migration protocol: %s", uri);
    return false;
}

static void dest_clear(Dest *d)
{
    g_free(d->name);
}

static void remember_fd(int fd)
{
    mig.fds = g_renew(int, mig.fds, mig.nb_fds + 1);
    mig.fds[mig.nb_fds++] = fd;
}

static void close_fds(void)
{
    for (unsigned i = 0; i < mig.nb_fds; i++) {
        fdset_close(mig.fds[i]);
    }
    g_free(mig.fds);
    mig.fds = NULL;
    mig.nb_fds = 0;
}

static int named_fd(const char *name)
{
    return named_fds ? named_fds->peek(name) : -1;
}

/* QEMU 10 calls a missing descriptor unseekable too. */
static bool named_fd_seekable(const char *name)
{
    int fd = named_fd(name);
    return fd >= 0 && lseek(fd, 0, SEEK_CUR) >= 0;
}

/* @shown: the name the user gave, for the errors (@path may be a
 * temporary file or /proc/self/fd/N standing for it). */
static int open_one(const char *path, const char *shown, int flags, bool save,
                    GError **errp)
{
    int fd;

    if (fdset_is_fdset_name(path)) {
        /* QEMU 10's words: migration's oracle (block commands keep 7.2's) */
        return fdset_open_qemu10(path, flags, errp);
    }
    fd = open(path, flags | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (errno == EINVAL && (flags & O_DIRECT)) {
            error_setg(errp, "Could not open '%s': filesystem does not "
                       "support O_DIRECT", shown);
        } else {
            error_setg_errno(errp, errno, "Could not %s '%s'",
                             save && (flags & O_CREAT) ? "create" : "open",
                             shown);
        }
    }
    return fd;
}

/*
 * Opens the stream descriptor and one per channel (the run gets them in
 * @t, this file closes them).  A plain path is saved through a new file
 * beside it, renamed over it once durable, so that a crash leaves the old
 * file whole (docs/migration.md); with an offset the file is written in
 * place, as QEMU does.  *@channels_failed: the stream descriptor was
 * opened, a channel's was not (QEMU opens those once the migration runs,
 * so its command succeeds and the migration fails); a temporary file made
 * for the save is removed again.
 */
static bool open_target(Dest *d, bool save, unsigned nchan, bool direct,
                        MrTarget *t, char **tmp_path, bool *channels_failed,
                        GError **errp)
{
    int acc = save ? O_WRONLY : O_RDONLY;
    const char *path = d->name;
    int fd;

    *tmp_path = NULL;
    *channels_failed = false;
    t->offset = d->offset;
    t->nb_chan = nchan;
    t->chan_fds = g_new0(int, nchan);
    if (d->kind == DEST_FD) {
        /* prepare() checked it is there and seekable */
        int named = named_fd(d->name);
        fd = fcntl(named, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            error_setg_errno(errp, errno, "Could not use descriptor '%s'",
                             d->name);
            return false;
        }
        /* QEMU takes the descriptor from the monitor */
        if (named_fds) {
            named_fds->close(d->name);
        }
    } else if (save && d->kind == DEST_PATH && d->offset == 0) {
        *tmp_path = g_strdup_printf("%s.strata-XXXXXX", path);
        fd = g_mkstemp_full(*tmp_path, O_RDWR | O_CLOEXEC, 0600);
        if (fd < 0) {
            error_setg_errno(errp, errno, "Could not create '%s'", path);
            g_free(*tmp_path);
            *tmp_path = NULL;
            return false;
        }
        path = *tmp_path;
    } else {
        fd = open_one(path, path, acc | (save ? O_CREAT : 0), save, errp);
        if (fd < 0) {
            return false;
        }
        if (lseek(fd, 0, SEEK_END) < 0) {
            fdset_close(fd);
            error_setg(errp, "Migration requires seekable transport (e.g. "
                       "file)");
            return false;
        }
    }
    remember_fd(fd);
    t->fd = fd;
    /*
     * Each channel opens the file again: O_DIRECT is a flag of the open
     * file, so the stream's small writes keep a descriptor without it.  A
     * passed descriptor or a fdset member is reopened through /proc, which
     * gives a file of its own (a dup would share the flag).
     */
    g_autofree char *proc = g_strdup_printf("/proc/self/fd/%d", fd);
    if (d->kind != DEST_PATH) {
        path = proc;
    }
    for (unsigned i = 0; i < nchan; i++) {
        int c = open_one(path, d->name, acc | (direct ? O_DIRECT : 0), save,
                         errp);
        if (c < 0) {
            if (*tmp_path) {
                unlink(*tmp_path);
                g_free(*tmp_path);
                *tmp_path = NULL;
            }
            *channels_failed = true;
            return false;
        }
        remember_fd(c);
        t->chan_fds[i] = c;
    }
    return true;
}

/* ---- running ---- */

static void unref_blocks(void)
{
    for (unsigned i = 0; i < mig.nb_refs; i++) {
        ram_block_unref(mig.refs[i]);
    }
    g_free(mig.refs);
    mig.refs = NULL;
    mig.nb_refs = 0;
}

static strList *str_list(GPtrArray *a)
{
    strList *head = NULL, **tail = &head;
    for (unsigned i = 0; i < a->len; i++) {
        strList *e = g_new0(strList, 1);
        e->value = g_strdup(a->pdata[i]);
        *tail = e;
        tail = &e->next;
    }
    return head;
}

static strList *str_list_copy(const strList *l)
{
    strList *head = NULL, **tail = &head;
    for (; l; l = l->next) {
        strList *e = g_new0(strList, 1);
        e->value = g_strdup(l->value);
        *tail = e;
        tail = &e->next;
    }
    return head;
}

static void on_pages_done(void *opaque)
{
    mig.pages_ns = clock_ns();
    if (mig.incoming || mig.live) {
        /* a live save reported "device" and its passes as they came */
        return;
    }
    /*
     * QEMU 10 with the VM stopped: the final sync after "device".  (Without
     * multifd QEMU sometimes syncs once more before it, depending on
     * timing; strata always has all pages by then.)
     */
    set_status(MIGRATION_STATUS_DEVICE);
    send_pass(2);
}

static void stop_logs(void)
{
    for (unsigned i = 0; i < mig.nb_logged; i++) {
        ram_block_log_stop(mig.logged[i]);
    }
    g_free(mig.logged);
    mig.logged = NULL;
    mig.nb_logged = 0;
}

/* A live save's sync (the save thread posted it). */
static void on_pass(void *opaque, uint64_t n)
{
    send_pass((int64_t)n);
}

static void on_pre_switchover(void *opaque)
{
    if (mig.status == MIGRATION_STATUS_CANCELLING) {
        return;
    }
    mig.switchover_ns = clock_ns();
    set_status(MIGRATION_STATUS_PRE_SWITCHOVER);
}

static void on_done(void *opaque, const GError *err)
{
    MigRun *r = mig.run;
    bool cancelled = mig_run_cancelled(r);
    MrStats *st = mig_run_stats(r);
    MigLiveStats *ls = mig_run_live_stats(r);

    mig.end_ns = clock_ns();
    atomic_store(&mig.live_final.syncs, atomic_load(&ls->syncs));
    atomic_store(&mig.live_final.dirty_rate, atomic_load(&ls->dirty_rate));
    atomic_store(&mig.live_final.remaining, 0);
    atomic_store(&mig.live_final.expected_ms, atomic_load(&ls->expected_ms));
    atomic_store(&mig.live_final.precopy_bytes,
                 atomic_load(&ls->precopy_bytes));
    stop_logs();
    atomic_store(&mig.final.transferred, atomic_load(&st->transferred));
    atomic_store(&mig.final.normal, atomic_load(&st->normal));
    atomic_store(&mig.final.duplicate, atomic_load(&st->duplicate));
    atomic_store(&mig.final.done_bytes, atomic_load(&st->done_bytes));
    if (mig.incoming) {
        mig.skipped = str_list(mig_run_skipped(r));
        mig.unread = str_list(mig_run_unread(r));
        for (strList *l = mig.skipped; l; l = l->next) {
            warn_print("migrate-incoming: RAM block '%s' of the file has no "
                       "memory backend; not loaded", l->value);
        }
        if (mig.unread) {
            GString *s = g_string_new(NULL);
            for (strList *l = mig.unread; l; l = l->next) {
                g_string_append_printf(s, "%s%s", s->len ? ", " : "",
                                       l->value);
            }
            warn_print("migrate-incoming: device state not read: %s",
                       s->str);
            g_string_free(s, true);
        }
    }
    if (err && !(cancelled && !mig.incoming)) {
        mig.error_desc = mig.incoming
            ? g_strdup_printf("load of migration failed: %s", err->message)
            : g_strdup(err->message);
    }
    bool failed = err != NULL;
    mig.run = NULL;
    mig_run_free(r);            /* err goes with it */
    ds_registry_end(mig.devstate);
    mig.devstate = NULL;
    close_fds();
    unref_blocks();
    if (failed) {
        set_status(mig.error_desc ? MIGRATION_STATUS_FAILED
                                  : MIGRATION_STATUS_CANCELLED);
        return;
    }
    set_status(MIGRATION_STATUS_COMPLETED);
}

static void reset_run_state(bool incoming)
{
    g_free(mig.error_desc);
    mig.error_desc = NULL;
    qapi_free_strList(mig.skipped);
    qapi_free_strList(mig.unread);
    mig.skipped = mig.unread = NULL;
    memset(&mig.final, 0, sizeof(mig.final));
    memset(&mig.live_final, 0, sizeof(mig.live_final));
    mig.incoming = incoming;
    mig.start_ns = clock_ns();
    mig.pages_ns = mig.end_ns = mig.switchover_ns = 0;
}

/* The checks QEMU makes before it starts, in its order. */
static bool prepare(const char *uri, MigrationChannelList *channels,
                    bool incoming, Dest *d, GError **errp)
{
    if (!parse_dest(uri, channels, incoming, d, errp)) {
        return false;
    }
    if (!cap(MIGRATION_CAPABILITY_MAPPED_RAM)) {
        error_setg(errp, "strata-daemon migrates RAM with the mapped-ram "
                   "capability only (migrate-set-capabilities)");
        return false;
    }
    if (d->kind == DEST_FD && !named_fd_seekable(d->name)) {
        error_setg(errp, "Migration requires seekable transport (e.g. "
                   "file)");
        return false;
    }
    if (is_active()) {
        error_setg(errp, "There's a migration process in progress");
        return false;
    }
    /* it holds the RAM blocks and the device state streams until it ends */
    const char *job = machine_snapshot_running_job();
    if (job) {
        error_setg(errp, "Machine snapshot job '%s' is running: a migration "
                   "can start once it has concluded", job);
        return false;
    }
    return true;
}

static void start(bool incoming, Dest *d, GError **errp)
{
    MigSpec spec = { 0 };
    char *tmp = NULL;
    g_autofree MrBlock *blocks = NULL;
    unsigned n = ram_block_count();

    if (!incoming && n == 0) {
        error_setg(errp, "There is no RAM to save: add a memory backend "
                   "(object-add memory-backend-memfd or -file) first");
        return;
    }
    mig.multifd = cap(MIGRATION_CAPABILITY_MULTIFD);
    spec.params.channels = mig.multifd ? mig.multifd_channels : 1;
    /* as QEMU: direct-io takes effect with mapped-ram and multifd only */
    spec.params.direct_io = mig.direct_io && mig.multifd;
    /*
     * As QEMU (migration_rate_exceeded counts multifd's bytes too): one
     * limit for the pages of all channels together; none on a restore.
     */
    spec.params.max_bandwidth = incoming ? 0 : mig.max_bandwidth;
    if (!ds_registry_begin(incoming, incoming ? "migrate-incoming"
                                              : "migrate", NULL,
                           &spec.params.devstate, errp)) {
        return;
    }
    GError *err = NULL;
    bool late = false;
    if (!open_target(d, !incoming, spec.params.channels,
                     spec.params.direct_io, &spec.target, &tmp, &late,
                     &err)) {
        ds_registry_end(spec.params.devstate);
        close_fds();
        g_free(spec.target.chan_fds);
        if (!incoming) {
            /* QEMU has started when it opens the file: it fails visibly */
            reset_run_state(false);
            set_status(MIGRATION_STATUS_SETUP);
            mig.error_desc = g_strdup(err->message);
            set_status(MIGRATION_STATUS_FAILED);
        }
        /* a save's channels are opened by QEMU's running migration */
        if (incoming || !late) {
            g_propagate_error(errp, err);
        } else {
            g_error_free(err);
        }
        return;
    }
    blocks = g_new0(MrBlock, n);
    mig.refs = g_new0(RamBlock *, n);
    mig.total = 0;
    unsigned i = 0;
    for (RamBlock *rb = ram_block_first(); rb; rb = ram_block_next(rb), i++) {
        blocks[i].id = rb->id;
        blocks[i].used = rb->size;
        blocks[i].host = rb->host;
        blocks[i].has_fd = rb->fd >= 0;
        blocks[i].fd = rb->fd;
        ram_block_ref(rb);
        mig.refs[i] = rb;
        mig.total += incoming ? 0 : rb->size;
    }
    mig.nb_refs = n;
    /*
     * pause-before-switchover makes a save live: the blocks with a dirty
     * log are written while the VM runs, the others (and the last dirty
     * pages) once the monitor has paused it.  Without the capability the
     * save is the one pass of a stopped VM, dirty logs or not.
     */
    mig.live = !incoming && cap(MIGRATION_CAPABILITY_PAUSE_BEFORE_SWITCHOVER);
    if (mig.live) {
        mig.logged = g_new0(RamBlock *, n);
        for (i = 0; i < n; i++) {
            if (ram_block_has_dirty_log(mig.refs[i]) &&
                ram_block_log_start(mig.refs[i], NULL)) {
                mig.logged[mig.nb_logged++] = mig.refs[i];
            }
        }
        spec.live = true;
        spec.ram = mig.refs;
        spec.downtime_limit_ms = mig.downtime_limit;
        spec.pre_switchover = on_pre_switchover;
        spec.pass = on_pass;
    }
    spec.blocks = blocks;
    spec.nb_blocks = n;
    spec.tmp_path = tmp;
    spec.final_path = tmp ? d->name : NULL;
    spec.pages_done = on_pages_done;
    spec.done = on_done;

    reset_run_state(incoming);
    set_status(MIGRATION_STATUS_SETUP);
    if (!incoming) {
        send_pass(1);
    }
    mig.setup_ns = clock_ns();
    set_status(MIGRATION_STATUS_ACTIVE);
    mig.devstate = spec.params.devstate;
    mig.run = incoming ? mig_run_load(&spec) : mig_run_save(&spec);
    g_free(spec.target.chan_fds);
    g_free(tmp);
}

void qmp_migrate(const char *uri, MigrationChannelList *channels,
                 bool has_detach, bool detach, bool has_resume, bool resume,
                 GError **errp)
{
    Dest d = { 0 };

    if (has_resume && resume) {
        error_setg(errp, "Cannot resume if there is no paused migration");
        return;
    }
    if (prepare(uri, channels, false, &d, errp)) {
        start(false, &d, errp);
    }
    dest_clear(&d);
}

void qmp_migrate_incoming(const char *uri, MigrationChannelList *channels,
                          bool has_exit_on_error, bool exit_on_error,
                          GError **errp)
{
    Dest d = { 0 };

    /* exit-on-error: a daemon never exits for a failed restore */
    if (prepare(uri, channels, true, &d, errp)) {
        start(true, &d, errp);
    }
    dest_clear(&d);
}

/* QEMU's check and words; a live save waiting at pre-switchover goes on. */
void qmp_migrate_continue(MigrationStatus state, GError **errp)
{
    if (mig.status != state) {
        error_setg(errp, "Migration not in expected state: %s",
                   MigrationStatus_str(mig.status));
        return;
    }
    /*
     * QEMU counts a continue in another state as one for its next pause;
     * strata's saves pause only at pre-switchover, so it changes nothing.
     */
    if (state == MIGRATION_STATUS_PRE_SWITCHOVER && mig.run) {
        set_status(MIGRATION_STATUS_DEVICE);
        mig_run_continue(mig.run);
    }
}

void qmp_migrate_cancel(GError **errp)
{
    if (mig.run && !mig.incoming && mig.status != MIGRATION_STATUS_CANCELLING) {
        set_status(MIGRATION_STATUS_CANCELLING);
        mig_run_cancel(mig.run);
    }
}

/*
 * quit (or a signal) while a save or restore runs: its threads use the
 * memory backends and descriptors that the shutdown frees next, so it is
 * cancelled and waited for here, as QEMU's shutdown cancels a migration.
 * A save leaves the previous file (the unfinished one is removed); a
 * restore stops where it is (the daemon is going away with its memory).
 */
static void migration_shutdown(void)
{
    if (!mig.run) {
        return;
    }
    if (!mig.incoming && mig.status != MIGRATION_STATUS_CANCELLING) {
        set_status(MIGRATION_STATUS_CANCELLING);
    }
    mig_run_cancel(mig.run);
    while (mig.run) {
        loop_iterate(true);
    }
}

__attribute__((constructor)) static void cmd_migration_init(void)
{
    qmp_server_at_shutdown(QMP_SHUTDOWN_JOBS, migration_shutdown);
}

/* ---- query-migrate ---- */

static MigrationStats *ram_stats(const MrStats *st, MigLiveStats *live,
                                 int64_t now)
{
    MigrationStats *s = g_new0(MigrationStats, 1);
    uint64_t normal = atomic_load(&st->normal);
    uint64_t dup = atomic_load(&st->duplicate);
    uint64_t done = atomic_load(&st->done_bytes);
    double secs = (double)(now - mig.setup_ns) / 1e9;

    s->transferred = (int64_t)atomic_load(&st->transferred);
    s->total = (int64_t)mig.total;
    s->remaining = (int64_t)(mig.total > done ? mig.total - done : 0);
    s->duplicate = (int64_t)dup;
    s->normal = (int64_t)normal;
    s->normal_bytes = (int64_t)(normal * MR_PAGE_SIZE);
    s->page_size = MR_PAGE_SIZE;
    s->dirty_sync_count = mig.pages_ns ? 2 : 1;
    s->multifd_bytes = mig.multifd ? normal * MR_PAGE_SIZE : 0;
    /* the VM is stopped during the whole save: it is all downtime */
    s->downtime_bytes = (uint64_t)s->transferred;
    if (live) {
        uint64_t pre = atomic_load(&live->precopy_bytes);
        s->dirty_sync_count = (int64_t)atomic_load(&live->syncs);
        s->dirty_pages_rate = (int64_t)atomic_load(&live->dirty_rate);
        s->remaining = (int64_t)atomic_load(&live->remaining);
        /* before the switchover everything written is precopy */
        if (pre || mig.switchover_ns) {
            s->precopy_bytes = pre;
            s->downtime_bytes = (uint64_t)s->transferred - pre;
        } else {
            s->precopy_bytes = (uint64_t)s->transferred;
            s->downtime_bytes = 0;
        }
    }
    if (secs > 0) {
        s->mbps = (double)s->transferred * 8 / 1e6 / secs;
        s->pages_per_second = (uint64_t)((double)(normal + dup) / secs);
    }
    return s;
}

MigrationInfo *qmp_query_migrate(GError **errp)
{
    MigrationInfo *info = g_new0(MigrationInfo, 1);
    int64_t now = clock_ns();

    if (mig.status == MIGRATION_STATUS_NONE) {
        return info;
    }
    info->has_status = true;
    info->status = mig.status;
    if (mig.incoming) {
        if (mig.status == MIGRATION_STATUS_FAILED) {
            info->error_desc = g_strdup(mig.error_desc);
        }
        if (mig.status == MIGRATION_STATUS_COMPLETED) {
            info->x_strata_skipped_ram_blocks = str_list_copy(mig.skipped);
            info->x_strata_unread_sections = str_list_copy(mig.unread);
        }
        return info;
    }
    switch (mig.status) {
    case MIGRATION_STATUS_SETUP:
        break;
    case MIGRATION_STATUS_ACTIVE:
    case MIGRATION_STATUS_DEVICE:
    case MIGRATION_STATUS_PRE_SWITCHOVER:
    case MIGRATION_STATUS_CANCELLING: {
        MigLiveStats *ls = mig.live ? mig_run_live_stats(mig.run) : NULL;
        info->has_setup_time = true;
        info->setup_time = (mig.setup_ns - mig.start_ns) / 1000000;
        info->has_total_time = true;
        info->total_time = (now - mig.start_ns) / 1000000;
        info->has_expected_downtime = true;
        info->expected_downtime = ls ? (int64_t)atomic_load(&ls->expected_ms)
                                     : (int64_t)mig.downtime_limit;
        info->ram = ram_stats(mig_run_stats(mig.run), ls, now);
        break;
    }
    case MIGRATION_STATUS_COMPLETED:
        info->has_setup_time = true;
        info->setup_time = (mig.setup_ns - mig.start_ns) / 1000000;
        info->has_total_time = true;
        info->total_time = (mig.end_ns - mig.start_ns) / 1000000;
        info->has_downtime = true;
        /*
         * A live save: QEMU's downtime runs from the stop of the VM, right
         * before pre-switchover, to the end; here the monitor stops it
         * when it sees pre-switchover, so that is where it starts.
         */
        info->downtime = mig.live
            ? (mig.end_ns - mig.switchover_ns) / 1000000
            : info->total_time;
        info->ram = ram_stats(&mig.final, mig.live ? &mig.live_final : NULL,
                              mig.end_ns);
        break;
    case MIGRATION_STATUS_FAILED:
        info->error_desc = g_strdup(mig.error_desc);
        break;
    default:
        break;
    }
    return info;
}
