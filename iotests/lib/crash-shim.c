/*
 * LD_PRELOAD library for crash tests: kills the process with SIGKILL on
 * entry to its Nth call that changes a file (pwrite, pwritev, ftruncate,
 * fallocate, fsync, fdatasync), so a test can stop a program at every
 * point where the image could be left half updated.
 *
 *   CRASH_SHIM_AT=N      kill on entry to the Nth such call (unset: never)
 *   CRASH_SHIM_COUNT=F   at a normal exit, write the number of calls to F
 *
 * It also refuses io_uring set-up, so that strata (and QEMU) fall back to
 * their thread pools, whose system calls go through the wrappers here.
 * stdout is made line buffered so that what a program printed before the
 * kill reaches the pipe.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static atomic_long calls;
static long kill_at = -1;

__attribute__((constructor)) static void shim_init(void)
{
    const char *at = getenv("CRASH_SHIM_AT");

    if (at && *at) {
        kill_at = atol(at);
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
}

__attribute__((destructor)) static void shim_fini(void)
{
    const char *path = getenv("CRASH_SHIM_COUNT");

    if (path && *path) {
        FILE *f = fopen(path, "w");
        if (f) {
            fprintf(f, "%ld\n", atomic_load(&calls));
            fclose(f);
        }
    }
}

static void count_call(void)
{
    long n = atomic_fetch_add(&calls, 1) + 1;

    if (n == kill_at) {
        kill(getpid(), SIGKILL);
        for (;;) {
            pause();
        }
    }
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    count_call();
    return NEXT(pwrite)(fd, buf, n, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    count_call();
    return NEXT(pwrite64)(fd, buf, n, off);
}

ssize_t pwritev(int fd, const struct iovec *iov, int niov, off_t off)
{
    count_call();
    return NEXT(pwritev)(fd, iov, niov, off);
}

ssize_t pwritev64(int fd, const struct iovec *iov, int niov, off_t off)
{
    count_call();
    return NEXT(pwritev64)(fd, iov, niov, off);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int niov, off_t off,
                 int flags)
{
    count_call();
    return NEXT(pwritev2)(fd, iov, niov, off, flags);
}

int ftruncate(int fd, off_t len)
{
    count_call();
    return NEXT(ftruncate)(fd, len);
}

int ftruncate64(int fd, off_t len)
{
    count_call();
    return NEXT(ftruncate64)(fd, len);
}

int fallocate(int fd, int mode, off_t off, off_t len)
{
    count_call();
    return NEXT(fallocate)(fd, mode, off, len);
}

int fallocate64(int fd, int mode, off_t off, off_t len)
{
    count_call();
    return NEXT(fallocate64)(fd, mode, off, len);
}

int fsync(int fd)
{
    count_call();
    return NEXT(fsync)(fd);
}

int fdatasync(int fd)
{
    count_call();
    return NEXT(fdatasync)(fd);
}

/* liburing's set-up: "not supported", so the thread pool is used. */
int io_uring_queue_init_params(unsigned entries, void *ring, void *p)
{
    (void)entries; (void)ring; (void)p;
    return -ENOSYS;
}

int io_uring_queue_init(unsigned entries, void *ring, unsigned flags)
{
    (void)entries; (void)ring; (void)flags;
    return -ENOSYS;
}
