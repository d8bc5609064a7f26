/*
 * LD_PRELOAD library that plays a file system without O_DIRECT (tmpfs
 * before Linux 6.6, some FUSE and network file systems): an open(2) with
 * O_DIRECT of a file under $ODIRECT_REFUSE_DIR fails with EINVAL, as the
 * kernel's open_check_o_direct() answers there, and so does
 * fcntl(F_SETFL) adding O_DIRECT to such a descriptor.  Other files are
 * opened as usual, so a test can run strata-daemon and QEMU side by side
 * on the same "file system" and compare what they say.
 *
 *   ODIRECT_REFUSE_DIR=DIR   the directory whose files refuse O_DIRECT
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* /proc/self/fd/N names a descriptor: its target is the file meant. */
static bool refused_path(const char *path)
{
    const char *dir = getenv("ODIRECT_REFUSE_DIR");
    char target[PATH_MAX];

    if (!dir || !*dir || !path) {
        return false;
    }
    if (strncmp(path, "/proc/self/fd/", 14) == 0) {
        ssize_t n = readlink(path, target, sizeof(target) - 1);
        if (n < 0) {
            return false;
        }
        target[n] = '\0';
        path = target;
    }
    return strncmp(path, dir, strlen(dir)) == 0;
}

static bool refused_fd(int fd)
{
    char link[64];

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    return refused_path(link);
}

#define OPEN_WRAPPER(name, ...)                                         \
    int name(__VA_ARGS__, int flags, ...)                               \
    {                                                                   \
        static int (*real)();                                           \
        mode_t mode = 0;                                                \
        if (flags & (O_CREAT | O_TMPFILE)) {                            \
            va_list ap;                                                 \
            va_start(ap, flags);                                        \
            mode = va_arg(ap, mode_t);                                  \
            va_end(ap);                                                 \
        }                                                               \
        if (!real) {                                                    \
            real = (int (*)())dlsym(RTLD_NEXT, #name);                  \
        }                                                               \
        if ((flags & O_DIRECT) && refused_path(path)) {                 \
            errno = EINVAL;                                             \
            return -1;                                                  \
        }                                                               \
        return OPEN_CALL;                                               \
    }

#define OPEN_CALL real(path, flags, mode)
OPEN_WRAPPER(open, const char *path)
OPEN_WRAPPER(open64, const char *path)
#undef OPEN_CALL
#define OPEN_CALL real(dirfd, path, flags, mode)
OPEN_WRAPPER(openat, int dirfd, const char *path)
OPEN_WRAPPER(openat64, int dirfd, const char *path)
#undef OPEN_CALL

/* glibc's _FORTIFY_SOURCE entry points (no mode: no O_CREAT) */
int __open_2(const char *path, int flags)
{
    return open(path, flags);
}

int __open64_2(const char *path, int flags)
{
    return open64(path, flags);
}

#define FCNTL_WRAPPER(name)                                             \
    int name(int fd, int cmd, ...)                                      \
    {                                                                   \
        static int (*real)(int, int, ...);                              \
        va_list ap;                                                     \
        va_start(ap, cmd);                                              \
        long arg = va_arg(ap, long);                                    \
        va_end(ap);                                                     \
        if (!real) {                                                    \
            real = (int (*)(int, int, ...))dlsym(RTLD_NEXT, #name);     \
        }                                                               \
        if (cmd == F_SETFL && (arg & O_DIRECT) && refused_fd(fd)) {     \
            errno = EINVAL;                                             \
            return -1;                                                  \
        }                                                               \
        return real(fd, cmd, arg);                                      \
    }

FCNTL_WRAPPER(fcntl)
FCNTL_WRAPPER(fcntl64)
