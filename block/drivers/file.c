/*
 * The "file" protocol driver, and the code the "host_device" and
 * "host_cdrom" drivers (file-host.c) share with it: an image that is a
 * regular file or a block device on the host.  Growing ahead and the extent
 * cache are in file-grow.c; FileState is in file-int.h.
 *
 * Data moves through the aio engine chosen with aio= (io_uring by default
 * where the kernel allows it, else threads; native needs O_DIRECT); the
 * blocking calls that have no asynchronous form (fallocate, ftruncate,
 * ioctl) run in the thread pool.  With cache.direct=on the fd is O_DIRECT
 * and the alignment the kernel wants is probed per file at open, as QEMU
 * does; a request whose buffers do not meet it is bounced here.
 *
 * Image locks (locks.h) follow the permission transaction: check_perm takes
 * and checks, set_perm commits, abort_perm_update rolls back.  A reopen that
 * changes the access mode or O_DIRECT opens a second fd in reopen_prepare;
 * while it is pending, check_perm checks on the old fd first and then copies
 * the locks onto the new one (checking on the new fd would see the old fd's
 * locks as another user's), and reopen_commit swaps the fds.
 *
 * Invariants: s->fd is open from a successful open to close; s->lock.fd ==
 * s->fd; s->reopen_fd >= 0 only between reopen_prepare and commit/abort.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>
#include "strata/aio.h"
#include "strata/pool-class.h"
#include "strata/block-driver.h"
#include "strata/loop.h"
#include "strata/fdset.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "file-int.h"

#define MAX_BLOCKSIZE 4096
#define BOUNCE_ALIGN 4096

static const char *const on_off_auto_names[] = { "on", "off", "auto", NULL };
enum { LOCKING_ON, LOCKING_OFF, LOCKING_AUTO };

/* ---- Helpers ---- */

/*
 * QEMU's qemu_open(): "/dev/fdset/N" names a descriptor passed over QMP; a
 * clear message for O_DIRECT refusals.
 */
static int open_image(const char *name, int flags, mode_t mode, GError **errp)
{
    const char *action = (flags & O_CREAT) ? "create" : "open";
    if (fdset_is_fdset_name(name)) {
        int fd = fdset_open(name, flags, errp);
        return fd < 0 ? -errno : fd;
    }
    int fd = open(name, flags | O_CLOEXEC, mode);
    if (fd >= 0) {
        return fd;
    }
    int err = errno;
    if (err == EINVAL && (flags & O_DIRECT)) {
        int fd2 = open(name, (flags & ~O_DIRECT) | O_CLOEXEC, mode);
        if (fd2 >= 0) {
            close(fd2);
            error_setg(errp,
                       "Could not %s '%s': filesystem does not support O_DIRECT",
                       action, name);
            return -EINVAL;
        }
    }
    error_setg_errno(errp, err, "Could not %s '%s'", action, name);
    return -err;
}

static int open_flags_for(int node_flags)
{
    int flags = (node_flags & NODE_O_RDWR) ? O_RDWR : O_RDONLY;
    if (node_flags & NODE_O_NOCACHE) {
        flags |= O_DIRECT;
    }
    return flags;
}

/*
 * Linux lets a block device be set read-only (blockdev --setro) while
 * open(O_RDWR) still succeeds and only writes fail: refuse it at open.
 */
static int check_hdev_writable(int fd)
{
    struct stat st;
    int ro = 0;
    if (fstat(fd, &st) < 0) {
        return -errno;
    }
    if (!S_ISBLK(st.st_mode)) {
        return 0;
    }
    if (ioctl(fd, BLKROGET, &ro) < 0) {
        return -errno;
    }
    return ro ? -EACCES : 0;
}

static int translate_err(int err)
{
    if (err == -ENODEV || err == -ENOSYS || err == -EOPNOTSUPP ||
        err == -ENOTTY) {
        return -ENOTSUP;
    }
    return err;
}

int file_fallocate(int fd, int mode, off_t offset, off_t len)
{
    while (fallocate(fd, mode, offset, len) != 0) {
        if (errno != EINTR) {
            return translate_err(-errno);
        }
    }
    return 0;
}

/* QEMU's warn_report(): "prog: warning: msg". */
static void file_warn(const char *msg)
{
    const char *prog = g_get_prgname();
    warn_print("%s%swarning: %s", prog ? prog : "", prog ? ": " : "", msg);
}

/* Run blocking work in the pool from a coroutine, inline otherwise. */
static int run_blocking(ThreadPoolFunc *fn, void *opaque)
{
    return in_coroutine() ? thread_pool_co_run(fn, opaque) : fn(opaque);
}

/* ---- O_DIRECT alignment ---- */

/* NFS accepts any alignment with O_DIRECT; probing would say 1 = failed. */
static bool dio_byte_aligned(int fd)
{
    struct statfs buf;
    return fstatfs(fd, &buf) == 0 && buf.f_type == NFS_SUPER_MAGIC;
}

/* The kernel answers a misaligned O_DIRECT read with EINVAL. */
static bool io_aligned(int fd, void *buf, size_t len)
{
    ssize_t ret = pread(fd, buf, len, 0);
    return ret >= 0 || errno != EINVAL;
}

/*
 * Find the request and memory alignment O_DIRECT needs on fd, as QEMU
 * does: the logical block size when the device says it, else the smallest
 * read length and buffer offset that the kernel accepts.
 */
static bool probe_alignment(int fd, bool needs_alignment, uint32_t *req_align,
                            uint32_t *buf_align, GError **errp)
{
    static const size_t alignments[] = { 1, 512, 1024, 2048, 4096 };
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t max_align = MAX((size_t)MAX_BLOCKSIZE, page);
    unsigned int sector_size;

    if (!needs_alignment) {
        *req_align = 1;
        *buf_align = 1;
        return true;
    }
    *req_align = 0;
    *buf_align = 0;
    if (ioctl(fd, BLKSSZGET, &sector_size) >= 0) {
        *req_align = sector_size;
    }
    /* XFS_IOC_DIOINFO, defined here to avoid needing the xfs headers. */
    struct xfs_dioattr {
        uint32_t d_mem, d_miniosz, d_maxiosz;
    } da;
    if (ioctl(fd, _IOR('X', 30, struct xfs_dioattr), &da) >= 0) {
        *req_align = da.d_miniosz;
    }

    if (!*req_align) {
        void *buf = aligned_alloc_buf(max_align, max_align);
        for (size_t i = 0; i < G_N_ELEMENTS(alignments); i++) {
            if (io_aligned(fd, buf, alignments[i])) {
                /* 1 means the probe learned nothing: take the safe value. */
                *req_align = alignments[i] != 1 ? alignments[i] : max_align;
                break;
            }
        }
        aligned_free(buf);
    }
    if (!*buf_align) {
        char *buf = aligned_alloc_buf(max_align, 2 * max_align);
        for (size_t i = 0; i < G_N_ELEMENTS(alignments); i++) {
            if (io_aligned(fd, buf + alignments[i], max_align)) {
                *buf_align = alignments[i] != 1 ? alignments[i] : *req_align;
                break;
            }
        }
        aligned_free(buf);
    }
    if (!*req_align || !*buf_align) {
        error_setg(errp, "Could not find working O_DIRECT alignment\n"
                         "Try cache.direct=off");
        return false;
    }
    return true;
}

static bool fd_needs_alignment(int fd, int open_flags)
{
    return (open_flags & O_DIRECT) && !dio_byte_aligned(fd);
}

/* ---- Options ---- */

static bool take_enum(json_t *options, const char *key,
                      const char *const *names, int *out, GError **errp)
{
    char *str = NULL;
    if (!opts_take_str(options, key, &str, errp)) {
        return false;
    }
    if (!str) {
        return true;
    }
    for (int i = 0; names[i]; i++) {
        if (!strcmp(str, names[i])) {
            *out = i;
            g_free(str);
            return true;
        }
    }
    error_setg(errp, "invalid parameter value: %s", str);
    g_free(str);
    return false;
}

/* A QEMU_OPT_NUMBER: an integer of either JSON type, or its spelling. */
static bool take_number(json_t *options, const char *key, uint64_t *out,
                        GError **errp)
{
    json_t *v = json_object_get(options, key);
    if (!v) {
        return true;
    }
    bool ok = false;
    if (json_is_integer(v)) {
        *out = (uint64_t)json_integer_value(v);
        ok = true;
    } else if (json_is_string(v)) {
        int64_t n;
        uint64_t u;
        const char *s = json_string_value(v);
        if (parse_uint64(s, &u) == 0) {
            *out = u;
            ok = true;
        } else if (parse_int64(s, &n) == 0) {
            *out = (uint64_t)n;
            ok = true;
        }
    }
    if (!ok) {
        error_setg(errp, "Parameter '%s' expects a number", key);
        return false;
    }
    json_object_del(options, key);
    return true;
}

/* ---- Open and close ---- */

int file_open_common(BlockNode *bs, json_t *options, int flags,
                     bool device, GError **errp)
{
    FileState *s = bs->opaque;
    const char *drv_name = bs->drv->protocol_name;
    char *filename = NULL;
    int aio = aio_default_type();
    int locking = LOCKING_AUTO;
    bool drop_cache = true;
    uint64_t max_batch = 0;
    struct stat st;
    int ret;

    s->fd = -1;
    s->reopen_fd = -1;
    s->len = -1;
    co_mutex_init(&s->grow_lock);
    s->is_device = device;

    if (!opts_take_str(options, "filename", &filename, errp) ||
        !take_enum(options, "aio", aio_type_names, &aio, errp) ||
        !take_number(options, "aio-max-batch", &max_batch, errp) ||
        !take_enum(options, "locking", on_off_auto_names, &locking, errp) ||
        !opts_take_bool(options, "drop-cache", &drop_cache, errp)) {
        ret = -EINVAL;
        goto fail;
    }
    if (!filename || !filename[0]) {
        /* An empty name names nothing, as in QEMU. */
        error_setg(errp, "The '%s' block driver requires a file name",
                   drv_name);
        ret = -EINVAL;
        goto fail;
    }
    s->filename = filename;
    s->aio = aio;
    s->aio_max_batch = max_batch;
    s->drop_cache = drop_cache;
    s->use_lock = locking == LOCKING_ON ||
                  (locking == LOCKING_AUTO && lock_has_ofd());
    if (locking == LOCKING_ON && !lock_has_ofd()) {
        file_warn("File lock requested but OFD locking syscall is "
                  "unavailable, falling back to POSIX file locks\n"
                  "Due to the implementation, locks can be lost "
                  "unexpectedly.");
    }

    s->open_flags = open_flags_for(flags) | s->extra_open_flags;
    ret = open_image(filename, s->open_flags, 0, errp);
    if (ret < 0) {
        ret = ret == -EROFS ? -EACCES : ret;
        goto fail;
    }
    s->fd = ret;
    image_lock_init(&s->lock, s->fd, s->use_lock);

    if (s->open_flags & O_RDWR) {
        ret = check_hdev_writable(s->fd);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "The device is not writable");
            goto fail;
        }
    }

    if (s->aio == AIO_NATIVE && !(s->open_flags & O_DIRECT)) {
        error_setg(errp, "aio=native was specified, but it requires "
                         "cache.direct=on, which was not specified.");
        ret = -EINVAL;
        goto fail;
    }
    if (s->aio != AIO_THREADS) {
        GError *local = NULL;
        if (!aio_engine_get(s->aio, &local)) {
            error_propagate(errp, local);
            error_prefix(errp, s->aio == AIO_NATIVE
                         ? "Unable to use native AIO: "
                         : "Unable to use io_uring: ");
            ret = -EINVAL;
            goto fail;
        }
    }

    if (fstat(s->fd, &st) < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "Could not stat file");
        goto fail;
    }
    /* a device node's file system is /dev's (a tmpfs): a disk, not memory */
    s->in_memory = S_ISREG(st.st_mode) && file_fd_in_memory(s->fd);
    s->has_discard = true;
    s->has_write_zeroes = true;
    if (!device) {
        if (!S_ISREG(st.st_mode)) {
            error_setg(errp, "'%s' driver requires '%s' to be a regular file",
                       drv_name, filename);
            ret = -EINVAL;
            goto fail;
        }
        s->has_fallocate = true;
    } else {
        if (!S_ISCHR(st.st_mode) && !S_ISBLK(st.st_mode)) {
            error_setg(errp, "'%s' driver requires '%s' to be either "
                       "a character or block device", drv_name, filename);
            ret = -EINVAL;
            goto fail;
        }
        /*
         * BLKZEROOUT goes around the page cache, so without O_DIRECT
         * cached pages would still show the old data.
         */
        if (!(s->open_flags & O_DIRECT)) {
            s->has_write_zeroes = false;
        }
    }

    s->needs_alignment = fd_needs_alignment(s->fd, s->open_flags);
    if (!probe_alignment(s->fd, s->needs_alignment, &s->request_alignment,
                         &s->buf_align, errp)) {
        ret = -EINVAL;
        goto fail;
    }
    return 0;

fail:
    if (s->fd >= 0) {
        fdset_close(s->fd);
        s->fd = -1;
    }
    g_free(filename); /* s->filename is this string or NULL */
    s->filename = NULL;
    return ret;
}

static int file_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    return file_open_common(bs, options, flags, false, errp);
}

void file_close(BlockNode *bs)
{
    FileState *s = bs->opaque;
    file_grow_ahead_end(s);
    if (s->reopen_fd >= 0) {
        fdset_close(s->reopen_fd);
        s->reopen_fd = -1;
    }
    /* Closing the open file description drops its OFD locks with it. */
    if (s->fd >= 0) {
        fdset_close(s->fd);
        s->fd = -1;
    }
    g_free(s->filename);
    s->filename = NULL;
}

bool file_strip_prefix(const char *filename, const char *prefix,
                  json_t *options)
{
    if (g_str_has_prefix(filename, prefix)) {
        filename += strlen(prefix);
        /*
         * "file:a:b" names the relative path "a:b"; as QEMU does, it is
         * kept as "./a:b" so that it is not read as protocol "a" later
         * (backing file names are resolved against it).
         */
        if (filename[strcspn(filename, ":/")] == ':') {
            char *dotted = g_strconcat("./", filename, NULL);
            json_object_set_new(options, "filename", json_string(dotted));
            g_free(dotted);
            return true;
        }
    }
    /* a file name is bytes, not necessarily UTF-8 */
    json_object_set_new(options, "filename", json_string_nocheck(filename));
    return true;
}

static bool file_parse_filename(const char *filename, json_t *options,
                                GError **errp)
{
    return file_strip_prefix(filename, "file:", options);
}

void file_refresh_limits(BlockNode *bs)
{
    FileState *s = bs->opaque;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);

    bs->bl.request_alignment = s->request_alignment;
    bs->bl.min_mem_alignment = s->buf_align;
    bs->bl.opt_mem_alignment = MAX(s->buf_align, (uint32_t)page);
}

/* ---- Permissions and locks ---- */

int file_check_perm(BlockNode *bs, uint64_t perm, uint64_t shared,
                    GError **errp)
{
    FileState *s = bs->opaque;
    if (!s->use_lock) {
        return 0;
    }
    /* The new fd must not take part in the check: it would see itself. */
    if (s->reopen_fd >= 0) {
        lock_apply(s->reopen_fd, &s->reopen_held, 0, 0, true, NULL);
    }
    int ret = image_lock_prepare(&s->lock, perm, shared, s->filename, errp);
    if (ret < 0) {
        return ret;
    }
    if (s->reopen_fd >= 0) {
        ret = lock_apply(s->reopen_fd, &s->reopen_held, perm, ~shared, false,
                         errp);
        if (ret < 0) {
            lock_apply(s->reopen_fd, &s->reopen_held, 0, 0, true, NULL);
            image_lock_abort(&s->lock);
            return ret;
        }
    }
    return 0;
}

void file_set_perm(BlockNode *bs, uint64_t perm, uint64_t shared)
{
    FileState *s = bs->opaque;
    image_lock_commit(&s->lock, perm, shared);
    if (s->use_lock && s->reopen_fd >= 0) {
        lock_apply(s->reopen_fd, &s->reopen_held, perm, ~shared, true, NULL);
    }
}

void file_abort_perm_update(BlockNode *bs)
{
    FileState *s = bs->opaque;
    image_lock_abort(&s->lock);
    if (s->use_lock && s->reopen_fd >= 0) {
        lock_apply(s->reopen_fd, &s->reopen_held, 0, 0, true, NULL);
    }
}

/* ---- Reopen ---- */

int file_reopen_prepare(ReopenState *rs, GError **errp)
{
    BlockNode *bs = rs->bs;
    FileState *s = bs->opaque;
    bool drop_cache = true;
    int new_flags = open_flags_for(rs->flags) | s->extra_open_flags;

    /* Only drop-cache may change; the node compares the other options. */
    if (!opts_take_bool(rs->options, "drop-cache", &drop_cache, errp)) {
        return -EINVAL;
    }
    /*
     * aio=native with a buffered fd is refused at open only, as in QEMU: a
     * reopen to writeback keeps native AIO (the kernel then completes it
     * synchronously, which is correct, just slower).
     */
    /* The new mode may not allow it, and the fd may change. */
    file_grow_ahead_end(s);
    s->reopen_drop_cache = drop_cache;
    s->reopen_open_flags = new_flags;
    s->reopen_held = (LockBytes) { 0 };
    if (new_flags == s->open_flags) {
        return 0;
    }

    int fd = open_image(s->filename, new_flags, 0, errp);
    if (fd < 0) {
        return fd;
    }
    if (new_flags & O_RDWR) {
        int ret = check_hdev_writable(fd);
        if (ret < 0) {
            fdset_close(fd);
            error_setg_errno(errp, -ret, "The device is not writable");
            return ret;
        }
    }
    /* Fail now rather than at commit if O_DIRECT has no usable alignment. */
    if (!probe_alignment(fd, fd_needs_alignment(fd, new_flags),
                         &s->reopen_request_alignment, &s->reopen_buf_align,
                         errp)) {
        fdset_close(fd);
        return -EINVAL;
    }
    s->reopen_fd = fd;
    return 0;
}

void file_reopen_commit(ReopenState *rs)
{
    FileState *s = rs->bs->opaque;

    s->drop_cache = s->reopen_drop_cache;
    if (s->reopen_fd < 0) {
        return;
    }
    /*
     * The new fd must hold at least what the old one holds, whether or not
     * a permission change ran during this reopen.  Taking shared locks only
     * fails against an exclusive lock, which no QEMU or strata takes.
     */
    if (s->use_lock) {
        lock_apply(s->reopen_fd, &s->reopen_held, s->lock.held.perm,
                   s->lock.held.unshared, true, NULL);
    }
    fdset_close(s->fd);
    file_data_cache_forget(s);
    s->fd = s->reopen_fd;
    s->reopen_fd = -1;
    s->open_flags = s->reopen_open_flags;
    s->lock.fd = s->fd;
    s->lock.held = s->reopen_held;
    s->needs_alignment = fd_needs_alignment(s->fd, s->open_flags);
    s->request_alignment = s->reopen_request_alignment;
    s->buf_align = s->reopen_buf_align;
}

void file_reopen_abort(ReopenState *rs)
{
    FileState *s = rs->bs->opaque;
    if (s->reopen_fd >= 0) {
        fdset_close(s->reopen_fd);
        s->reopen_fd = -1;
    }
}

/* ---- Data path ---- */

static AioEngine *file_engine(FileState *s)
{
    AioEngine *e = aio_engine_get(s->aio, NULL);
    /* Another thread whose kernel context refuses the engine: use threads. */
    return e ? e : aio_engine_get(AIO_THREADS, NULL);
}

static bool iov_is_aligned(const IOVec *v, uint32_t align)
{
    for (int i = 0; i < v->niov; i++) {
        if (((uintptr_t)v->iov[i].iov_base | v->iov[i].iov_len) &
            (align - 1)) {
            return false;
        }
    }
    return true;
}

/*
 * Transfer all of v at offset, going round again after short transfers.
 * Returns the bytes done (< v->size only for a read that reached EOF) or
 * -errno.
 */
static int64_t coroutine_fn do_rw(BlockNode *bs, AioEngine *e, AioOp op,
                                  int64_t offset, IOVec *v)
{
    FileState *s = bs->opaque;
    uint64_t done = 0;
    int64_t ret = 0;
    IOVec rest = { 0 };

    while (done < v->size) {
        const IOVec *cur = v;
        /* Only a short transfer needs the remainder as its own vector. */
        if (done) {
            if (!rest.iov) {
                iovec_init(&rest, v->niov);
            }
            iovec_reset(&rest);
            iovec_concat(&rest, v, done, v->size - done);
            cur = &rest;
        }
        /* The engines resubmit on EINTR/EAGAIN themselves.  A write
         * of a copy nobody waits for may run idle (file-copy.c). */
        bool idle = op == AIO_OP_WRITE && pool_background_write_idle();
        int64_t r = file_read_inline(s, op, cur) ||
                    (!idle && file_write_inline(s, op, cur))
                    ? file_rw_here(s, op, offset + done, cur)
                    : idle
                    ? file_co_write_background(s->fd, offset + done,
                                               cur->iov, cur->niov)
                    : aio_co_rw(e, s->fd, op, offset + done, cur->iov,
                                cur->niov);
        if (r < 0) {
            ret = r;
            break;
        }
        if (r == 0) {
            ret = op == AIO_OP_WRITE ? -ENOSPC : 0;
            break;
        }
        uint64_t before = done;
        done += r;
        /*
         * An O_DIRECT read that stops inside a block is at EOF or short for
         * some other reason; only the file length tells which, and reading
         * on from an unaligned offset would fail.  Re-read the partial block
         * unless that would make no progress.
         */
        if (op == AIO_OP_READ && s->needs_alignment && done < v->size &&
            (done % s->request_alignment)) {
            off_t len = lseek(s->fd, 0, SEEK_END);
            uint64_t aligned = done - done % s->request_alignment;
            if ((len >= 0 && (uint64_t)len <= offset + done) ||
                aligned <= before) {
                break;
            }
            done = aligned;
        }
    }
    if (rest.iov) {
        iovec_destroy(&rest);
    }
    return ret < 0 ? ret : (int64_t)done;
}

static int coroutine_fn file_co_rw(BlockNode *bs, int64_t offset,
                                   int64_t bytes, IOVec *qiov,
                                   size_t qiov_offset, AioOp op)
{
    FileState *s = bs->opaque;
    AioEngine *e = file_engine(s);
    IOVec part, *vp = qiov;
    void *bounce = NULL;
    int64_t r;

    if (s->fd < 0) {
        return -EIO;
    }
    if (qiov_offset != 0 || qiov->size != (size_t)bytes) {
        iovec_init(&part, qiov->niov);
        iovec_concat(&part, qiov, qiov_offset, bytes);
        vp = &part;
    }

    /*
     * O_DIRECT wants aligned buffers and the kernel takes at most IOV_MAX
     * segments: either way, go through one aligned buffer.
     */
    bool must_bounce = vp->niov > IOV_MAX ||
                       (s->needs_alignment && !iov_is_aligned(vp, s->buf_align));
    if (!must_bounce) {
        r = do_rw(bs, e, op, offset, vp);
        /* Some kernels want every segment block-sized: retry linearised. */
        if (r == -EINVAL && s->needs_alignment && vp->niov > 1) {
            must_bounce = true;
        }
    }
    if (must_bounce) {
        IOVec b;
        bounce = aligned_alloc_buf(MAX(s->buf_align, BOUNCE_ALIGN), bytes);
        iovec_init_buf(&b, bounce, bytes);
        if (op == AIO_OP_WRITE) {
            iov_to_buf(vp->iov, vp->niov, 0, bounce, bytes);
        }
        r = do_rw(bs, e, op, offset, &b);
        if (op == AIO_OP_READ && r > 0) {
            iov_from_buf(vp->iov, vp->niov, 0, bounce, r);
        }
        iovec_destroy(&b);
    }
    if (op == AIO_OP_READ && r >= 0 && r < bytes) {
        /* Past EOF a file reads as zeroes. */
        iov_memset(vp->iov, vp->niov, r, 0, bytes - r);
    }
    aligned_free(bounce);
    if (vp == &part) {
        iovec_destroy(&part);
    }
    return r < 0 ? (int)r : 0;
}

int coroutine_fn file_co_preadv(BlockNode *bs, int64_t offset,
                                int64_t bytes, IOVec *qiov,
                                size_t qiov_offset, int flags)
{
    return file_co_rw(bs, offset, bytes, qiov, qiov_offset, AIO_OP_READ);
}

int coroutine_fn file_co_pwritev(BlockNode *bs, int64_t offset,
                                 int64_t bytes, IOVec *qiov,
                                 size_t qiov_offset, int flags)
{
    FileState *s = bs->opaque;
    int ret;

    file_grow_ahead(bs, offset + bytes);
    /* Before it is issued: a zero write meanwhile must not be skipped. */
    file_mark_written(s, offset, offset + bytes);
    ret = file_co_rw(bs, offset, bytes, qiov, qiov_offset, AIO_OP_WRITE);
    if (ret >= 0) {
        file_grew(s, offset + bytes);
    }
    return ret;
}

int coroutine_fn file_co_flush_to_disk(BlockNode *bs)
{
    FileState *s = bs->opaque;
    if (s->fd < 0) {
        return -EIO;
    }
    if (bs->open_flags & NODE_O_NO_FLUSH) {
        return 0;
    }
    if (s->page_cache_inconsistent) {
        return -s->page_cache_inconsistent;
    }
    int64_t r = aio_co_rw(file_engine(s), s->fd, AIO_OP_FLUSH, 0, NULL, 0);
    /*
     * After a failed fdatasync Linux may have marked the dirty pages clean
     * although they never reached the disk; a later fdatasync would succeed
     * and lie.  So every later flush fails too (not with O_DIRECT, which
     * has no dirty pages).
     */
    if (r < 0 && !(s->open_flags & O_DIRECT)) {
        s->page_cache_inconsistent = (int)-r;
    }
    return r < 0 ? (int)r : 0;
}

typedef struct FileJob {
    FileState *s;
    int fd;
    int64_t offset, bytes;
    int flags;            /* REQ_* for zero writes */
    bool blkdev;
    int64_t cur_length;   /* for zero writes past EOF */
    PreallocMode prealloc;
    GError **errp;
} FileJob;

static int zero_range_block(FileJob *j)
{
    FileState *s = j->s;
    if (!s->has_write_zeroes) {
        return -ENOTSUP;
    }
    /* BLKZEROOUT may fall back to writing zeroes in the kernel: slow. */
    if (j->flags & REQ_NO_FALLBACK) {
        return -ENOTSUP;
    }
    uint64_t range[2] = { j->offset, j->bytes };
    while (ioctl(j->fd, BLKZEROOUT, range) != 0) {
        if (errno != EINTR) {
            int ret = translate_err(-errno);
            if (ret == -ENOTSUP) {
                s->has_write_zeroes = false;
            }
            return ret;
        }
    }
    return 0;
}

static int job_write_zeroes(void *opaque)
{
    FileJob *j = opaque;
    FileState *s = j->s;
    int ret;

    if (j->blkdev) {
        return zero_range_block(j);
    }
    if (s->has_write_zeroes) {
        ret = file_fallocate(j->fd, FALLOC_FL_ZERO_RANGE, j->offset, j->bytes);
        if (ret == -ENOTSUP) {
            s->has_write_zeroes = false;
        } else if (ret != -EINVAL) {
            /* Some file systems refuse unaligned ranges with EINVAL. */
            return ret;
        }
    }
    if (s->has_discard && s->has_fallocate) {
        ret = file_fallocate(j->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           j->offset, j->bytes);
        if (ret == 0) {
            /* Allocate again so that later writes cannot fail with ENOSPC. */
            ret = file_fallocate(j->fd, 0, j->offset, j->bytes);
            if (ret != -ENOTSUP) {
                return ret;
            }
            s->has_fallocate = false;
        } else if (ret == -ENOTSUP) {
            s->has_discard = false;
        } else if (ret != -EINVAL) {
            return ret;
        }
    }
    /* Past EOF the file reads as zeroes anyway: just extend it. */
    if (s->has_fallocate && j->cur_length >= 0 && j->offset >= j->cur_length) {
        ret = file_fallocate(j->fd, 0, j->offset, j->bytes);
        if (ret != -ENOTSUP) {
            return ret;
        }
        s->has_fallocate = false;
    }
    return -ENOTSUP;
}

static int job_write_zeroes_unmap(void *opaque)
{
    FileJob *j = opaque;
    int ret = file_fallocate(j->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           j->offset, j->bytes);
    if (ret != -ENOTSUP && ret != -EINVAL && ret != -EBUSY) {
        return ret;
    }
    return job_write_zeroes(j);
}

int coroutine_fn file_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                       int64_t bytes, int flags)
{
    FileState *s = bs->opaque;
    struct stat st;
    if (s->fd < 0) {
        return -EIO;
    }
    /* A never-written part of the tail grown ahead reads as zeroes. */
    file_grow_ahead(bs, offset + bytes);
    bool skip = file_never_written(s, offset, offset + bytes);
    /*
     * Counted as written either way (zeroes stay zeroes, but this keeps
     * the ranges of an appending format merged into one).
     */
    file_mark_written(s, offset, offset + bytes);
    if (skip) {
        file_grew(s, offset + bytes);
        return 0;
    }
    FileJob j = {
        .s = s, .fd = s->fd, .offset = offset, .bytes = bytes, .flags = flags,
        .blkdev = s->is_device && fstat(s->fd, &st) == 0 &&
                  S_ISBLK(st.st_mode),
        .cur_length = file_getlength(bs),
    };
    file_hole_op_begin(s);
    int ret = thread_pool_co_run((flags & REQ_MAY_UNMAP)
                                 ? job_write_zeroes_unmap : job_write_zeroes,
                                 &j);
    file_hole_op_end(s);
    if (ret >= 0) {
        file_grew(s, offset + bytes);
    }
    return ret;
}

static int job_discard(void *opaque)
{
    FileJob *j = opaque;
    FileState *s = j->s;
    int ret;

    if (!s->has_discard) {
        return -ENOTSUP;
    }
    if (j->blkdev) {
        uint64_t range[2] = { j->offset, j->bytes };
        ret = 0;
        while (ioctl(j->fd, BLKDISCARD, range) != 0) {
            if (errno != EINTR) {
                ret = translate_err(-errno);
                break;
            }
        }
    } else {
        ret = file_fallocate(j->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                           j->offset, j->bytes);
    }
    if (ret == -ENOTSUP) {
        s->has_discard = false;
    }
    return ret;
}

int coroutine_fn file_co_pdiscard(BlockNode *bs, int64_t offset,
                                  int64_t bytes)
{
    FileState *s = bs->opaque;
    struct stat st;
    if (s->fd < 0) {
        return -EIO;
    }
    /* discard=ignore: succeed without doing anything, as QEMU. */
    if (!bs->discard_unmap) {
        return 0;
    }
    FileJob j = {
        .s = s, .fd = s->fd, .offset = offset, .bytes = bytes,
        .blkdev = s->is_device && fstat(s->fd, &st) == 0 &&
                  S_ISBLK(st.st_mode),
    };
    file_hole_op_begin(s);
    int ret = thread_pool_co_run(job_discard, &j);
    file_hole_op_end(s);
    return ret;
}

/* ---- Size, truncate, create ---- */

/*
 * Write the first block of a new file so that O_DIRECT alignment probing
 * finds real data (reads from a hole succeed at any length on some file
 * systems).  Also gives a new image the 4 KiB "disk size" QEMU shows.
 */
static void allocate_first_block(int fd, int64_t max_size)
{
    size_t size = max_size < MAX_BLOCKSIZE ? 512 : MAX_BLOCKSIZE;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void *buf = aligned_alloc_buf(MAX((size_t)MAX_BLOCKSIZE, page), size);
    ssize_t n;
    memset(buf, 0, size);
    do {
        n = pwrite(fd, buf, size, 0);
    } while (n == -1 && errno == EINTR);
    aligned_free(buf);
}

static int job_truncate(void *opaque)
{
    FileJob *j = opaque;
    int fd = j->fd;
    int64_t offset = j->offset;
    struct stat st;
    char *buf = NULL;
    int ret = 0;

    if (fstat(fd, &st) < 0) {
        ret = -errno;
        error_setg_errno(j->errp, -ret, "Could not stat file");
        return ret;
    }
    int64_t cur = st.st_size;
    if (cur > offset && j->prealloc != PREALLOC_MODE_OFF) {
        error_setg(j->errp, "Cannot use preallocation for shrinking files");
        return -ENOTSUP;
    }

    switch (j->prealloc) {
    case PREALLOC_MODE_OFF:
        if (ftruncate(fd, offset) != 0) {
            ret = -errno;
            error_setg_errno(j->errp, -ret, "Could not resize file");
        } else if (cur == 0 && offset > 0) {
            allocate_first_block(fd, offset);
        }
        return ret;
    case PREALLOC_MODE_FALLOC:
        if (offset != cur) {
            ret = -posix_fallocate(fd, cur, offset - cur);
            if (ret < 0) {
                error_setg_errno(j->errp, -ret,
                                 "Could not preallocate new data");
            } else if (cur == 0) {
                allocate_first_block(fd, offset);
            }
        }
        break;
    case PREALLOC_MODE_FULL: {
        /* Setting the final size first lets the file system plan extents. */
        if (ftruncate(fd, offset) != 0) {
            ret = -errno;
            error_setg_errno(j->errp, -ret, "Could not resize file");
            break;
        }
        const size_t chunk = 64 * KiB;
        buf = g_malloc0(chunk);
        int64_t pos = cur;
        while (pos < offset) {
            ssize_t n = pwrite(fd, buf, MIN((int64_t)chunk, offset - pos), pos);
            if (n < 0) {
                if (errno == EINTR) {
                    continue;
                }
                ret = -errno;
                error_setg_errno(j->errp, -ret,
                                 "Could not write zeros for preallocation");
                break;
            }
            pos += n;
        }
        if (ret == 0 && fsync(fd) < 0) {
            ret = -errno;
            error_setg_errno(j->errp, -ret, "Could not flush file to disk");
        }
        break;
    }
    default:
        error_setg(j->errp, "Unsupported preallocation mode: %s",
                   prealloc_mode_names[j->prealloc]);
        return -ENOTSUP;
    }

    if (ret < 0) {
        /* Best effort: the error already says what went wrong. */
        if (ftruncate(fd, cur) < 0) {
            /* The file keeps its new length; nothing more to report. */
        }
    }
    g_free(buf);
    return ret;
}

static int regular_truncate(int fd, int64_t offset, PreallocMode prealloc,
                            GError **errp)
{
    if ((unsigned)prealloc >= PREALLOC_MODE__MAX) {
        error_setg(errp, "Unsupported preallocation mode: %d", (int)prealloc);
        return -ENOTSUP;
    }
    FileJob j = {
        .fd = fd, .offset = offset, .prealloc = prealloc, .errp = errp,
    };
    return run_blocking(job_truncate, &j);
}

int coroutine_fn file_co_truncate(BlockNode *bs, int64_t offset,
                                  bool exact, PreallocMode prealloc,
                                  GError **errp)
{
    FileState *s = bs->opaque;
    struct stat st;

    if (fstat(s->fd, &st) < 0) {
        int ret = -errno;
        error_setg_errno(errp, -ret, "Failed to fstat() the file");
        return ret;
    }
    if (S_ISREG(st.st_mode)) {
        /* A regular file always gets exactly the size asked for. */
        file_grow_ahead_end(s);
        file_hole_op_begin(s);
        int ret = regular_truncate(s->fd, offset, prealloc, errp);
        file_hole_op_end(s);
        return ret;
    }
    if (prealloc != PREALLOC_MODE_OFF) {
        error_setg(errp, "Preallocation mode '%s' unsupported for this "
                   "non-regular file",
                   (unsigned)prealloc < PREALLOC_MODE__MAX
                   ? prealloc_mode_names[prealloc] : "?");
        return -ENOTSUP;
    }
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
        int64_t cur = file_getlength(bs);
        if (offset != cur && exact) {
            error_setg(errp, "Cannot resize device files");
            return -ENOTSUP;
        } else if (offset > cur) {
            error_setg(errp, "Cannot grow device files");
            return -EINVAL;
        }
        return 0;
    }
    error_setg(errp, "Resizing this file is not supported");
    return -ENOTSUP;
}

int64_t file_getlength(BlockNode *bs)
{
    FileState *s = bs->opaque;
    if (s->fd < 0) {
        return -EIO;
    }
    if (s->len >= 0) {
        return s->len;
    }
    /* lseek covers block devices too, where st_size is 0. */
    off_t size = lseek(s->fd, 0, SEEK_END);
    return size < 0 ? -errno : size;
}

int64_t file_get_allocated_file_size(BlockNode *bs)
{
    FileState *s = bs->opaque;
    struct stat st;
    if (fstat(s->fd, &st) < 0) {
        return -errno;
    }
    return (int64_t)st.st_blocks * 512;
}

int file_get_info(BlockNode *bs, BlockDriverInfo *bdi)
{
    /* Nothing to say: cluster size and VM state offset stay 0, like QEMU. */
    return 0;
}

static const char *const file_create_opts[] = {
    "size", "nocow", "preallocation", "extent_size_hint", NULL,
};

static int file_create(const char *filename, json_t *options, GError **errp)
{
    uint64_t size = 0, hint = 1 * MiB;
    bool nocow = false, has_hint;
    int prealloc = PREALLOC_MODE_OFF;
    int fd, ret;

    if (g_str_has_prefix(filename, "file:")) {
        filename += strlen("file:");
    }
    has_hint = json_object_get(options, "extent_size_hint") != NULL;
    if (!opts_take_size(options, "size", &size, errp) ||
        !opts_take_size(options, "extent_size_hint", &hint, errp) ||
        !opts_take_bool(options, "nocow", &nocow, errp) ||
        !take_enum(options, "preallocation", prealloc_mode_names, &prealloc,
                   errp)) {
        return -EINVAL;
    }
    /*
     * qemu-img create rounds the size up to whole sectors.  As in QEMU, a
     * size within 511 bytes of 8 EiB wraps to a negative length: the file
     * is still created, and sizing it fails ("Could not resize file:
     * Invalid argument"), leaving it empty.
     */
    size = (size + 511) & ~(uint64_t)511;
    if (hint > UINT32_MAX) {
        error_setg(errp, "Extent size hint is too large");
        return -EINVAL;
    }
    /*
     * A mode the file cannot do (metadata) is refused by the final
     * truncate, as in QEMU: the file exists by then, empty.
     */
    fd = open_image(filename, O_RDWR | O_CREAT, 0644, errp);
    if (fd < 0) {
        return fd;
    }
    /*
     * Writing needs WRITE, sizing needs RESIZE; nobody else may resize, or
     * the promise that the file has the size asked for would not hold.
     */
    ret = image_lock_take_checked(fd, BLK_PERM_WRITE | BLK_PERM_RESIZE,
                                  BLK_PERM_ALL & ~BLK_PERM_RESIZE, filename,
                                  errp);
    if (ret < 0) {
        fdset_close(fd);
        return ret;
    }

    ret = regular_truncate(fd, 0, PREALLOC_MODE_OFF, errp);
    if (ret < 0) {
        goto out;
    }
    if (nocow) {
        /* Only an optimisation (btrfs): failure is not an error. */
        int attr;
        if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
            attr |= FS_NOCOW_FL;
            ioctl(fd, FS_IOC_SETFLAGS, &attr);
        }
    }
#ifdef FS_IOC_FSSETXATTR
    {
        /* Best effort as well; a hint asked for explicitly gets a warning. */
        struct fsxattr attr;
        int r = ioctl(fd, FS_IOC_FSGETXATTR, &attr);
        if (r == 0) {
            attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
            attr.fsx_extsize = (uint32_t)hint;
            r = ioctl(fd, FS_IOC_FSSETXATTR, &attr);
        }
        if (r < 0 && has_hint && hint) {
            char *msg = g_strdup_printf("Failed to set extent size hint: %s",
                                        g_strerror(errno));
            file_warn(msg);
            g_free(msg);
        }
    }
#endif
    ret = regular_truncate(fd, (int64_t)size, prealloc, errp);

out:
    image_lock_release_all(fd);
    if (fdset_close(fd) != 0 && ret == 0) {
        ret = -errno;
        error_setg_errno(errp, -ret, "Could not close the new file");
    }
    return ret;
}

/* ---- Block status ---- */

/*
 * Where is the data around start?  0 with data/hole set when start is in
 * data (data == start) or in a hole (hole == start); -ENXIO in a trailing
 * hole or past EOF; another -errno when the file system cannot say.
 */
static int find_allocation(int fd, off_t start, off_t *data, off_t *hole)
{
    off_t offs = lseek(fd, start, SEEK_DATA);
    if (offs < 0) {
        return -errno;
    }
    if (offs < start) {
        return -EIO;
    }
    if (offs > start) {
        *hole = start;
        *data = offs;
        return 0;
    }
    offs = lseek(fd, start, SEEK_HOLE);
    if (offs < 0) {
        return -errno;
    }
    if (offs < start) {
        return -EIO;
    }
    if (offs > start) {
        *data = start;
        *hole = offs;
        return 0;
    }
    /* A hole appeared between the two calls: say nothing. */
    return -EBUSY;
}

int coroutine_fn file_co_block_status(BlockNode *bs, bool want_zero,
                                      int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map,
                                      BlockNode **file)
{
    FileState *s = bs->opaque;
    off_t data = 0, hole = 0;
    int ret;

    if (s->fd < 0) {
        return -EIO;
    }
    *map = offset;
    *file = bs;
    if (!want_zero) {
        *pnum = bytes;
        return BLOCK_DATA | BLOCK_OFFSET_VALID;
    }

    if (offset >= s->data_start && offset < s->data_end) {
        *pnum = MIN(bytes, s->data_end - offset);
        return BLOCK_DATA | BLOCK_OFFSET_VALID;
    }
    ret = find_allocation(s->fd, offset, &data, &hole);
    if (ret == -ENXIO) {
        *pnum = bytes;
        ret = BLOCK_ZERO;
    } else if (ret < 0) {
        /* Nothing known: everything is data. */
        *pnum = bytes;
        ret = BLOCK_DATA;
    } else if (data == offset) {
        *pnum = hole - offset;
        /* A data extent ending mid-block at EOF still covers the block. */
        uint32_t align = MAX(s->request_alignment, 1u);
        if (*pnum % align) {
            *pnum += align - *pnum % align;
        }
        if (!s->hole_ops) {
            s->data_start = offset;
            s->data_end = offset + *pnum;
        }
        ret = BLOCK_DATA;
    } else {
        *pnum = data - offset;
        ret = BLOCK_ZERO;
    }
    return ret | BLOCK_OFFSET_VALID;
}

bool file_get_file_id(BlockNode *bs, uint64_t *dev, uint64_t *ino)
{
    FileState *s = bs->opaque;
    struct stat st;

    if (s->fd < 0 || fstat(s->fd, &st) < 0) {
        return false;
    }
    *dev = st.st_dev;
    *ino = st.st_ino;
    return true;
}

const BlockDriver bdrv_file = {
    .format_name = "file",
    .protocol_name = "file",
    .instance_size = sizeof(FileState),
    .parse_filename = file_parse_filename,
    .open = file_open,
    .close = file_close,
    .refresh_limits = file_refresh_limits,
    .create = file_create,
    .create_opts = file_create_opts,
    .check_perm = file_check_perm,
    .set_perm = file_set_perm,
    .abort_perm_update = file_abort_perm_update,
    .reopen_prepare = file_reopen_prepare,
    .reopen_commit = file_reopen_commit,
    .reopen_abort = file_reopen_abort,
    .co_preadv = file_co_preadv,
    .co_pwritev = file_co_pwritev,
    .co_pwrite_zeroes = file_co_pwrite_zeroes,
    .co_pdiscard = file_co_pdiscard,
    .co_copy_range_from = file_co_copy_range_from,
    .co_copy_range_to = file_co_copy_range_to,
    .co_flush_to_disk = file_co_flush_to_disk,
    .co_truncate = file_co_truncate,
    .co_block_status = file_co_block_status,
    .getlength = file_getlength,
    .get_allocated_file_size = file_get_allocated_file_size,
    .get_file_id = file_get_file_id,
    .get_info = file_get_info,
    .supported_zero_flags = REQ_MAY_UNMAP | REQ_NO_FALLBACK,
};

int file_node_page_cache_fd(BlockNode *bs)
{
    if (bs->drv != &bdrv_file && bs->drv != &bdrv_host_device) {
        return -1;
    }
    FileState *s = bs->opaque;
    /* O_DIRECT: the page cache is not where the data is. */
    return s->fd >= 0 && !(s->open_flags & O_DIRECT) ? s->fd : -1;
}
