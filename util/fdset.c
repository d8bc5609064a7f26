/*
 * Descriptor sets.  The rules are QEMU's (they are what a management layer
 * that passes descriptors was written against): sets ordered by id, new
 * descriptors in front, matching by access mode only, a removed descriptor
 * kept open while a duplicate of its set is in use.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "strata/error.h"
#include "strata/fdset.h"

#define FDSET_PREFIX "/dev/fdset/"

typedef struct {
    int fd;
    char *opaque;
    bool removed;
} SetFd;

typedef struct {
    int64_t id;
    GList *fds;         /* SetFd *, newest first */
    GList *dups;        /* GINT_TO_POINTER(fd) handed out by fdset_open */
} Fdset;

static GList *sets;     /* Fdset *, ascending id */
static bool clients_now = true;

bool fdset_is_fdset_name(const char *name)
{
    return g_str_has_prefix(name, FDSET_PREFIX);
}

static Fdset *find_set(int64_t id)
{
    for (GList *l = sets; l; l = l->next) {
        Fdset *s = l->data;
        if (s->id == id) {
            return s;
        }
    }
    return NULL;
}

static void set_cleanup(Fdset *s)
{
    for (GList *l = s->fds; l;) {
        SetFd *f = l->data;
        GList *next = l->next;
        if (f->removed || (!s->dups && !clients_now)) {
            close(f->fd);
            g_free(f->opaque);
            g_free(f);
            s->fds = g_list_delete_link(s->fds, l);
        }
        l = next;
    }
    if (!s->fds && !s->dups) {
        sets = g_list_remove(sets, s);
        g_free(s);
    }
}

void fdset_cleanup(bool clients_connected)
{
    clients_now = clients_connected;
    for (GList *l = sets; l;) {
        GList *next = l->next;
        set_cleanup(l->data);
        l = next;
    }
}

/*
 * Two wordings: QEMU 7.2's qemu_open() (the block layer's, and qsd 7.2's,
 * which strata's block commands answer as) and QEMU 10's
 * monitor_fdset_dup_fd_add() (migration, a QEMU 10 feature here).  The
 * errno left behind is the same in both: ENOENT no set, EACCES no
 * descriptor of that access mode.
 */
static int open_in_set(const char *name, int flags, bool qemu10,
                       GError **errp)
{
    const char *num = name + strlen(FDSET_PREFIX);
    char *end;

    errno = 0;
    long long id = strtoll(num, &end, 10);
    if (!*num || *end || errno || id < 0 || id > INT_MAX) {
        error_setg(errp, "Could not parse fdset %s", name);
        errno = EINVAL;
        return -1;
    }
    Fdset *s = find_set(id);
    int err = ENOENT;
    int fd = -1;
    if (!s && qemu10) {
        error_setg(errp, "Failed to find fdset /dev/fdset/%lld", id);
        errno = err;
        return -1;
    }
    if (s) {
        err = EACCES;
        for (GList *l = s->fds; l; l = l->next) {
            SetFd *f = l->data;
            int fl = fcntl(f->fd, F_GETFL);
            if (fl < 0) {
                err = errno;
                if (qemu10) {
                    error_setg(errp, "Failed to read file status flags for "
                               "fd=%d", f->fd);
                    errno = err;
                    return -1;
                }
                break;
            }
            if ((fl & O_ACCMODE) == (flags & O_ACCMODE)) {
                fd = f->fd;
                break;
            }
        }
    }
    if (fd < 0 && err == EACCES && qemu10) {
        error_setg(errp, "Failed to find file descriptor with matching "
                   "flags=0x%x", flags);
        errno = err;
        return -1;
    }
    int dup = -1;
    if (fd >= 0) {
        dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        /* the status flags asked for (O_DIRECT, O_NONBLOCK...) */
        if (dup >= 0 && fcntl(dup, F_SETFL, flags) < 0) {
            err = errno;
            close(dup);
            dup = -1;
        } else if (dup < 0) {
            err = errno;
        }
    }
    if (dup < 0) {
        if (qemu10 && fd >= 0) {
            error_setg(errp, "Failed to dup() given file descriptor fd=%d",
                       fd);
        } else {
            error_setg_errno(errp, err, "Could not dup FD for %s flags %x",
                             name, flags);
        }
        errno = err;
        return -1;
    }
    s->dups = g_list_prepend(s->dups, GINT_TO_POINTER(dup));
    return dup;
}

int fdset_open(const char *name, int flags, GError **errp)
{
    return open_in_set(name, flags, false, errp);
}

int fdset_open_qemu10(const char *name, int flags, GError **errp)
{
    return open_in_set(name, flags, true, errp);
}

int fdset_close(int fd)
{
    for (GList *l = sets; l; l = l->next) {
        Fdset *s = l->data;
        GList *d = g_list_find(s->dups, GINT_TO_POINTER(fd));
        if (d) {
            int ret = close(fd);
            s->dups = g_list_delete_link(s->dups, d);
            if (!s->dups) {
                set_cleanup(s);
            }
            return ret;
        }
    }
    return close(fd);
}

int64_t fdset_add_fd(int fd, bool has_id, int64_t fdset_id,
                     const char *opaque, GError **errp)
{
    Fdset *s = has_id ? find_set(fdset_id) : NULL;

    if (!s) {
        if (has_id && fdset_id < 0) {
            error_setg(errp, "Parameter 'fdset-id' expects a non-negative "
                       "value");
            return -1;
        }
        if (!has_id) {
            /* the lowest id not taken */
            fdset_id = 0;
            for (GList *l = sets; l && ((Fdset *)l->data)->id == fdset_id;
                 l = l->next) {
                fdset_id++;
            }
        }
        s = g_new0(Fdset, 1);
        s->id = fdset_id;
        GList *l = sets;
        while (l && ((Fdset *)l->data)->id < fdset_id) {
            l = l->next;
        }
        sets = g_list_insert_before(sets, l, s);
    }
    SetFd *f = g_new0(SetFd, 1);
    f->fd = fd;
    f->opaque = g_strdup(opaque);
    s->fds = g_list_prepend(s->fds, f);
    return s->id;
}

bool fdset_remove_fd(int64_t fdset_id, bool has_fd, int64_t fd,
                     GError **errp)
{
    Fdset *s = find_set(fdset_id);
    bool found = false;

    if (s) {
        for (GList *l = s->fds; l; l = l->next) {
            SetFd *f = l->data;
            if (!has_fd || f->fd == fd) {
                f->removed = true;
                found = true;
                if (has_fd) {
                    break;
                }
            }
        }
        if (found || !has_fd) {
            set_cleanup(s);
            return true;
        }
    }
    if (has_fd) {
        error_setg(errp, "File descriptor named 'fdset-id:%" PRId64 ", fd:%"
                   PRId64 "' not found", fdset_id, fd);
    } else {
        error_setg(errp, "File descriptor named 'fdset-id:%" PRId64
                   "' not found", fdset_id);
    }
    return false;
}

void fdset_foreach(FdsetVisitFn *set_start, FdsetVisitFn *fd_fn,
                   void *opaque)
{
    for (GList *l = sets; l; l = l->next) {
        Fdset *s = l->data;
        set_start(opaque, s->id, -1, NULL);
        for (GList *m = s->fds; m; m = m->next) {
            SetFd *f = m->data;
            fd_fn(opaque, s->id, f->fd, f->opaque);
        }
    }
}
