/*
 * Image locks at QEMU's byte offsets: see locks.h for the protocol.
 *
 * Invariants: a LockBytes describes exactly the bytes its fd holds (bytes
 * are recorded only after fcntl succeeded and forgotten only after it
 * released them); an ImageLock's held bytes always cover its committed
 * (perm, ~shared), plus, between prepare and commit/abort, the prepared
 * ones.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include "strata/block.h"
#include "strata/error.h"
#include "locks.h"

#define PERM_FOREACH(i) for (int i = 0; (1ULL << (i)) & BLK_PERM_ALL; i++)

static int op_setlk = -1, op_getlk = -1;

static gpointer probe_ofd(gpointer unused)
{
    op_setlk = F_SETLK;
    op_getlk = F_GETLK;
#ifdef F_OFD_SETLK
    int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
        struct flock fl = {
            .l_whence = SEEK_SET, .l_start = 0, .l_len = 0, .l_type = F_WRLCK,
        };
        /* Old kernels reject the unknown command with EINVAL. */
        if (fcntl(fd, F_OFD_GETLK, &fl) == 0) {
            op_setlk = F_OFD_SETLK;
            op_getlk = F_OFD_GETLK;
        }
        close(fd);
    }
#endif
    return NULL;
}

static void probe_once(void)
{
    static GOnce once = G_ONCE_INIT;
    g_once(&once, probe_ofd, NULL);
}

bool lock_has_ofd(void)
{
    probe_once();
#ifdef F_OFD_SETLK
    return op_setlk == F_OFD_SETLK;
#else
    return false;
#endif
}

static int lock_op(int fd, int64_t start, int64_t len, int type)
{
    struct flock fl = {
        .l_whence = SEEK_SET, .l_start = start, .l_len = len, .l_type = type,
    };
    probe_once();
    int ret;
    do {
        ret = fcntl(fd, op_setlk, &fl);
    } while (ret == -1 && errno == EINTR);
    return ret == -1 ? -errno : 0;
}

int lock_fd(int fd, int64_t start, int64_t len, bool exclusive)
{
    return lock_op(fd, start, len, exclusive ? F_WRLCK : F_RDLCK);
}

int lock_fd_unlock(int fd, int64_t start, int64_t len)
{
    return lock_op(fd, start, len, F_UNLCK);
}

int lock_fd_test(int fd, int64_t start, int64_t len, bool exclusive)
{
    struct flock fl = {
        .l_whence = SEEK_SET, .l_start = start, .l_len = len,
        .l_type = exclusive ? F_WRLCK : F_RDLCK,
    };
    probe_once();
    if (fcntl(fd, op_getlk, &fl) == -1) {
        return -errno;
    }
    return fl.l_type == F_UNLCK ? 0 : -EAGAIN;
}

/*
 * EAGAIN/EACCES just mean "someone else holds it", which is the common case
 * and says nothing useful, so QEMU leaves the errno text out for those.
 */
static void lock_error(GError **errp, int err, const char *msg)
{
    if (err == EAGAIN || err == EACCES) {
        error_setg(errp, "%s", msg);
    } else {
        error_setg_errno(errp, err, "%s", msg);
    }
}

/* One row (base 100 or 200) of lock_apply. */
static int apply_row(int fd, int base, uint64_t *held, uint64_t want,
                     bool unlock, GError **errp)
{
    PERM_FOREACH(i) {
        uint64_t bit = 1ULL << i;
        int off = base + i;
        int ret;
        if ((want & bit) && !(*held & bit)) {
            ret = lock_fd(fd, off, 1, false);
            if (ret < 0) {
                char *msg = g_strdup_printf("Failed to lock byte %d", off);
                lock_error(errp, -ret, msg);
                g_free(msg);
                return ret;
            }
            *held |= bit;
        } else if (unlock && (*held & bit) && !(want & bit)) {
            ret = lock_fd_unlock(fd, off, 1);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to unlock byte %d", off);
                return ret;
            }
            *held &= ~bit;
        }
    }
    return 0;
}

int lock_apply(int fd, LockBytes *held, uint64_t perm_bits,
               uint64_t unshared_bits, bool unlock, GError **errp)
{
    LockBytes unknown = {
        .perm = unlock ? BLK_PERM_ALL : 0,
        .unshared = unlock ? BLK_PERM_ALL : 0,
    };
    LockBytes *h = held ? held : &unknown;
    int ret = apply_row(fd, LOCK_PERM_BASE, &h->perm, perm_bits & BLK_PERM_ALL,
                        unlock, errp);
    if (ret < 0) {
        return ret;
    }
    return apply_row(fd, LOCK_SHARED_BASE, &h->unshared,
                     unshared_bits & BLK_PERM_ALL, unlock, errp);
}

static int check_fail(GError **errp, int err, const char *fmt, uint64_t bit,
                      const char *filename)
{
    char *msg = g_strdup_printf(fmt, perm_name(bit));
    if (filename) {
        /* QEMU prints this as a hint on its own line. */
        char *full = g_strdup_printf(
            "%s\nIs another process using the image [%s]?", msg, filename);
        g_free(msg);
        msg = full;
    }
    lock_error(errp, err, msg);
    g_free(msg);
    return -err;
}

int lock_check(int fd, uint64_t perm, uint64_t shared, const char *filename,
               GError **errp)
{
    /* Whoever refuses to share something we take... */
    PERM_FOREACH(i) {
        uint64_t bit = 1ULL << i;
        if (perm & bit) {
            int ret = lock_fd_test(fd, LOCK_SHARED_BASE + i, 1, true);
            if (ret < 0) {
                return check_fail(errp, -ret, "Failed to get \"%s\" lock", bit,
                                  filename);
            }
        }
    }
    /* ...then whoever takes something we refuse to share. */
    PERM_FOREACH(i) {
        uint64_t bit = 1ULL << i;
        if (!(shared & bit)) {
            int ret = lock_fd_test(fd, LOCK_PERM_BASE + i, 1, true);
            if (ret < 0) {
                return check_fail(errp, -ret,
                                  "Failed to get shared \"%s\" lock", bit,
                                  filename);
            }
        }
    }
    return 0;
}

void image_lock_init(ImageLock *il, int fd, bool enabled)
{
    *il = (ImageLock) {
        .fd = fd, .enabled = enabled, .perm = 0, .shared = BLK_PERM_ALL,
    };
}

int image_lock_prepare(ImageLock *il, uint64_t perm, uint64_t shared,
                       const char *filename, GError **errp)
{
    if (!il->enabled) {
        return 0;
    }
    /*
     * Only releasing: nothing to take or check now.  Bytes are dropped at
     * commit, where an unlock error is ignored anyway.
     */
    if ((il->perm | perm) == il->perm &&
        (il->shared & shared) == il->shared) {
        return 0;
    }
    /* Keep what the current state needs while the new one is checked. */
    int ret = lock_apply(il->fd, &il->held, il->perm | perm,
                         ~il->shared | ~shared, false, errp);
    if (ret == 0) {
        ret = lock_check(il->fd, perm, shared, filename, errp);
        if (ret == 0) {
            return 0;
        }
    }
    image_lock_abort(il);
    return ret;
}

void image_lock_commit(ImageLock *il, uint64_t perm, uint64_t shared)
{
    if (il->enabled) {
        /* Only releases bytes; an error here leaves a byte too many held. */
        lock_apply(il->fd, &il->held, perm, ~shared, true, NULL);
    }
    il->perm = perm;
    il->shared = shared;
}

void image_lock_abort(ImageLock *il)
{
    if (il->enabled) {
        lock_apply(il->fd, &il->held, il->perm, ~il->shared, true, NULL);
    }
}

int image_lock_take_checked(int fd, uint64_t perm, uint64_t shared,
                            const char *filename, GError **errp)
{
    int ret = lock_apply(fd, NULL, perm, ~shared, false, errp);
    if (ret == 0) {
        ret = lock_check(fd, perm, shared, filename, errp);
    }
    if (ret < 0) {
        image_lock_release_all(fd);
    }
    return ret;
}

void image_lock_release_all(int fd)
{
    lock_apply(fd, NULL, 0, 0, true, NULL);
}
