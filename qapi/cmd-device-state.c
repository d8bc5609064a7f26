/*
 * Device state streams over QMP (docs/migration.md "Device state"): the
 * monitor registers a back end's descriptor under an id with
 * x-strata-device-state-add; the next migrate, migrate-incoming,
 * snapshot-save/-load or machine snapshot job takes every registered
 * stream (or those it names: strata/device-state.h), and when it ended
 * the streams it spent are closed and show what happened in
 * x-strata-query-device-state.  One of them at a time holds streams.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "strata/device-state.h"
#include "strata/fdset.h"
#include "strata/id.h"
#include "qapi-commands.h"

/*
 * getfd names belong to the QMP session of the command; the program that
 * runs the QMP server says how to take one (ds_registry_set_named_fds).
 * The registry does not call the server itself: programs that run
 * snapshot jobs without one (unit tests) link it too.
 */
static int (*take_named_fd)(const char *name);

void ds_registry_set_named_fds(int (*take)(const char *name))
{
    take_named_fd = take;
}

typedef struct Entry {
    char *id;
    int fd;                     /* -1 once spent */
    bool iterative;
    XStrataDeviceStateStatus status;
    uint64_t bytes, rounds;
    DsStream *live;             /* in the running migration */
    DsSet *set;                 /* the set live belongs to */
} Entry;

static GPtrArray *entries;      /* Entry * in registration order */
/*
 * The one set that holds streams (one save or restore at a time has
 * them), and who holds it: "snapshot-save" and its job, for the messages.
 * A save or restore that took no stream holds nothing: it neither blocks
 * nor ends the others.
 */
static DsSet *running;
static bool running_incoming;
static char *running_cmd;
static char *running_job;

/* "snapshot-save job 'j'", "migrate" */
static char *holder_name(void)
{
    return running_job ? g_strdup_printf("%s job '%s'", running_cmd,
                                         running_job)
                       : g_strdup(running_cmd);
}

static void entry_close(Entry *e)
{
    if (e->fd >= 0) {
        close(e->fd);
        e->fd = -1;
    }
}

static void entry_free(gpointer p)
{
    Entry *e = p;
    entry_close(e);
    g_free(e->id);
    g_free(e);
}

static Entry *find(const char *id, unsigned *index)
{
    for (unsigned i = 0; entries && i < entries->len; i++) {
        Entry *e = entries->pdata[i];
        if (strcmp(e->id, id) == 0) {
            if (index) {
                *index = i;
            }
            return e;
        }
    }
    return NULL;
}

/*
 * A getfd name (taken from the monitor, as migrate fd: does) or a set's
 * member (a plain duplicate: the restore closes it when done).
 */
static int take_fd(const char *name, GError **errp)
{
    if (fdset_is_fdset_name(name)) {
        /* the direction of a pipe end is its access mode */
        static const int modes[] = { O_RDONLY, O_WRONLY, O_RDWR };
        for (unsigned i = 0; i < G_N_ELEMENTS(modes); i++) {
            g_autoptr(GError) err = NULL;
            int fd = fdset_open(name, modes[i], &err);
            if (fd >= 0) {
                int plain = fcntl(fd, F_DUPFD_CLOEXEC, 0);
                fdset_close(fd);
                if (plain < 0) {
                    error_setg_errno(errp, errno, "Could not use '%s'", name);
                }
                return plain;
            }
            if (i == G_N_ELEMENTS(modes) - 1) {
                g_propagate_error(errp, g_steal_pointer(&err));
            }
        }
        return -1;
    }
    int fd = take_named_fd ? take_named_fd(name) : -1;
    if (fd < 0) {
        error_setg(errp, "File descriptor named '%s' has not been found",
                   name);
    }
    return fd;
}

void qmp_x_strata_device_state_add(const char *id, const char *fd,
                                   bool has_iterative, bool iterative,
                                   GError **errp)
{
    unsigned index;
    Entry *old = find(id, &index);

    if (!id_wellformed(id) || strlen(id) > DS_ID_MAX) {
        error_setg(errp, "Device state id '%s' is not a valid name (a letter, "
                   "then letters, digits, '-', '.', '_'; at most %u)", id,
                   (unsigned)DS_ID_MAX);
        return;
    }
    if (old && old->fd >= 0) {
        error_setg(errp, "Device state '%s' is already registered", id);
        return;
    }
    Entry *e = g_new0(Entry, 1);
    e->fd = take_fd(fd, errp);
    if (e->fd < 0) {
        g_free(e);
        return;
    }
    e->id = g_strdup(id);
    e->iterative = has_iterative && iterative;
    e->status = X_STRATA_DEVICE_STATE_STATUS_REGISTERED;
    if (!entries) {
        entries = g_ptr_array_new_with_free_func(entry_free);
    }
    if (old) {
        /* a spent stream of the same id: replaced */
        g_ptr_array_remove_index(entries, index);
    }
    g_ptr_array_add(entries, e);
}

void qmp_x_strata_device_state_del(const char *id, GError **errp)
{
    unsigned index;
    Entry *e = find(id, &index);

    if (!e) {
        error_setg(errp, "Device state '%s' is not registered", id);
        return;
    }
    if (e->live) {
        g_autofree char *holder = holder_name();
        error_setg(errp, "Device state '%s' is in use by %s", id, holder);
        return;
    }
    g_ptr_array_remove_index(entries, index);
}

XStrataDeviceStateInfoList *qmp_x_strata_query_device_state(GError **errp)
{
    XStrataDeviceStateInfoList *head = NULL, **tail = &head;

    for (unsigned i = 0; entries && i < entries->len; i++) {
        Entry *e = entries->pdata[i];
        XStrataDeviceStateInfoList *l = g_new0(XStrataDeviceStateInfoList, 1);
        XStrataDeviceStateInfo *info = g_new0(XStrataDeviceStateInfo, 1);
        info->id = g_strdup(e->id);
        info->iterative = e->iterative;
        info->status = e->status;
        info->bytes = e->live ? atomic_load(&e->live->bytes) : e->bytes;
        info->rounds = e->live ? atomic_load(&e->live->rounds) : e->rounds;
        l->value = info;
        *tail = l;
        tail = &l->next;
    }
    return head;
}

/* In @ids (NULL: every id). */
static bool wanted(const GPtrArray *ids, const char *id)
{
    if (!ids) {
        return true;
    }
    for (guint i = 0; i < ids->len; i++) {
        if (strcmp(ids->pdata[i], id) == 0) {
            return true;
        }
    }
    return false;
}

bool ds_registry_begin(bool incoming, const char *cmd, const char *job,
                       DsSet **out, GError **errp)
{
    return ds_registry_begin_ids(incoming, cmd, job, NULL, out, errp);
}

bool ds_registry_begin_ids(bool incoming, const char *cmd, const char *job,
                           const GPtrArray *ids, DsSet **out, GError **errp)
{
    *out = NULL;
    for (guint i = 0; ids && i < ids->len; i++) {
        const char *id = ids->pdata[i];
        Entry *e = find(id, NULL);
        if (!e || e->fd < 0) {
            error_setg(errp, "Device state '%s' is not registered%s", id,
                       e ? " (its descriptor was spent: add it again)" : "");
            return false;
        }
        for (guint k = 0; k < i; k++) {
            if (strcmp(ids->pdata[k], id) == 0) {
                error_setg(errp, "Device state '%s' is named twice", id);
                return false;
            }
        }
    }
    /*
     * One set at a time holds streams: a second one beside it would take
     * the streams a running save reads (or a restore writes), or save a
     * state without them.  One that wants none runs beside it.
     */
    Entry *held = NULL, *other = NULL;
    for (unsigned i = 0; running && entries && i < entries->len; i++) {
        Entry *e = entries->pdata[i];
        if (e->fd >= 0 && wanted(ids, e->id)) {
            if (e->live && !held) {
                held = e;
            } else if (!e->live && !other) {
                other = e;
            }
        }
    }
    if (held || other) {
        g_autofree char *holder = holder_name();
        if (held) {
            error_setg(errp, "Device state '%s' is in use by a running save "
                       "or restore (%s)", held->id, holder);
        } else {
            error_setg(errp, "Device state '%s' cannot be taken while %s "
                       "holds device state '%s' (one save or restore at a "
                       "time has the streams)", other->id, holder,
                       ds_set_get(running, 0)->id);
        }
        return false;
    }
    for (unsigned i = 0; entries && i < entries->len; i++) {
        Entry *e = entries->pdata[i];
        if (e->fd < 0 || !wanted(ids, e->id)) {
            continue;
        }
        int acc = fcntl(e->fd, F_GETFL) & O_ACCMODE;
        if (incoming ? acc == O_RDONLY : acc == O_WRONLY) {
            error_setg(errp, "Device state '%s' has a descriptor the daemon "
                       "cannot %s (a %s)", e->id,
                       incoming ? "write" : "read",
                       incoming ? "restore writes the state into it"
                                : "save reads the state from it");
            return false;
        }
    }
    for (unsigned i = 0; entries && i < entries->len; i++) {
        Entry *e = entries->pdata[i];
        if (e->fd < 0 || !wanted(ids, e->id)) {
            continue;
        }
        if (!*out) {
            *out = ds_set_new();
        }
        e->live = ds_set_add(*out, e->id, e->fd, e->iterative);
        e->set = *out;
        e->status = incoming ? X_STRATA_DEVICE_STATE_STATUS_RESTORING
                             : X_STRATA_DEVICE_STATE_STATUS_SAVING;
    }
    if (*out) {
        running = *out;
        running_incoming = incoming;
        running_cmd = g_strdup(cmd);
        running_job = g_strdup(job);
    }
    return true;
}

void ds_registry_end(DsSet *set)
{
    if (!set) {
        return;                 /* it took no stream: nothing of its */
    }
    /* only one set at a time holds streams: running is this one */
    const char *cmd = running == set ? running_cmd : "device state";
    bool incoming = running == set ? running_incoming : true;
    for (unsigned i = 0; entries && i < entries->len; i++) {
        Entry *e = entries->pdata[i];
        DsStream *st = e->live;
        if (!st || e->set != set) {
            continue;
        }
        /* the load closed the descriptors it handed a state to */
        if (st->fd < 0) {
            e->fd = -1;
        }
        e->bytes = atomic_load(&st->bytes);
        e->rounds = atomic_load(&st->rounds);
        switch (atomic_load(&st->outcome)) {
        case DS_DONE:
            e->status = incoming ? X_STRATA_DEVICE_STATE_STATUS_RESTORED
                                 : X_STRATA_DEVICE_STATE_STATUS_SAVED;
            entry_close(e);
            break;
        case DS_FAILED:
            e->status = X_STRATA_DEVICE_STATE_STATUS_FAILED;
            entry_close(e);
            break;
        case DS_NOT_IN_FILE:
            e->status = X_STRATA_DEVICE_STATE_STATUS_NOT_IN_FILE;
            /* set once the load has handed back every state it had */
            warn_print("%s: device state '%s' is registered but the %s has "
                       "none; its descriptor was left alone", cmd, e->id,
                       strcmp(cmd, "snapshot-load") ? "file" : "VM state");
            break;
        default:
            /* untouched (the migration failed before): still usable */
            e->status = X_STRATA_DEVICE_STATE_STATUS_REGISTERED;
            break;
        }
        e->live = NULL;
        e->set = NULL;
    }
    if (running == set) {
        running = NULL;
        g_free(running_cmd);
        g_free(running_job);
        running_cmd = running_job = NULL;
    }
    ds_set_free(set);
}
