/*
 * Descriptors passed with SCM_RIGHTS: named ones (getfd, closefd), kept by
 * the monitor, and descriptor sets (add-fd, remove-fd, query-fdsets) that
 * "/dev/fdset/N" file names open (util/fdset.c).  Replies and errors are
 * QEMU 7.2's.
 */
#include <unistd.h>

#include "strata/fdset.h"
#include "strata/qmp-server.h"
#include "qapi-commands.h"

static int passed_fd(GError **errp)
{
    int fd = qmp_session_take_fd(qmp_session_current());

    if (fd < 0) {
        error_setg(errp, "No file descriptor supplied via SCM_RIGHTS");
    }
    return fd;
}

void qmp_getfd(const char *fdname, GError **errp)
{
    int fd = passed_fd(errp);

    if (fd < 0) {
        return;
    }
    /* a digit would read as a descriptor number where names are taken */
    if (g_ascii_isdigit(fdname[0])) {
        close(fd);
        error_setg(errp, "Parameter 'fdname' expects a name not starting "
                   "with a digit");
        return;
    }
    qmp_session_set_named_fd(qmp_session_current(), fdname, fd);
}

void qmp_closefd(const char *fdname, GError **errp)
{
    if (!qmp_session_close_named_fd(qmp_session_current(), fdname)) {
        error_setg(errp, "File descriptor named '%s' not found", fdname);
    }
}

AddfdInfo *qmp_add_fd(bool has_fdset_id, int64_t fdset_id,
                      const char *opaque, GError **errp)
{
    int fd = passed_fd(errp);

    if (fd < 0) {
        return NULL;
    }
    int64_t id = fdset_add_fd(fd, has_fdset_id, fdset_id, opaque, errp);
    if (id < 0) {
        close(fd);
        return NULL;
    }
    AddfdInfo *info = g_new0(AddfdInfo, 1);
    info->fdset_id = id;
    info->fd = fd;
    return info;
}

void qmp_remove_fd(int64_t fdset_id, bool has_fd, int64_t fd, GError **errp)
{
    fdset_remove_fd(fdset_id, has_fd, fd, errp);
}

/* QEMU prepends as it walks, so both lists come out reversed. */
static void add_set(void *opaque, int64_t id, int fd, const char *fd_opaque)
{
    FdsetInfoList **list = opaque;
    FdsetInfoList *e = g_new0(FdsetInfoList, 1);

    e->value = g_new0(FdsetInfo, 1);
    e->value->fdset_id = id;
    e->next = *list;
    *list = e;
}

static void add_fd(void *opaque, int64_t id, int fd, const char *fd_opaque)
{
    FdsetInfoList **list = opaque;
    FdsetFdInfoList *e = g_new0(FdsetFdInfoList, 1);

    e->value = g_new0(FdsetFdInfo, 1);
    e->value->fd = fd;
    e->value->opaque = g_strdup(fd_opaque);
    e->next = (*list)->value->fds;
    (*list)->value->fds = e;
}

FdsetInfoList *qmp_query_fdsets(GError **errp)
{
    FdsetInfoList *list = NULL;

    fdset_foreach(add_set, add_fd, &list);
    return list;
}
