/*
 * Small requests to a file in memory (tmpfs, ramfs) done in the calling
 * thread instead of the engine's: the rules and their reasons below.
 * Used by file.c's do_rw().
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <linux/magic.h>

#include "strata/job.h"
#include "strata/loop.h"
#include "file-int.h"

/* tmpfs and ramfs: a read or write there is a copy to or from memory. */
bool file_fd_in_memory(int fd)
{
    struct statfs buf;
    return fstatfs(fd, &buf) == 0 &&
           (buf.f_type == TMPFS_MAGIC || buf.f_type == RAMFS_MAGIC);
}

/*
 * Up to this size a buffered read of a file in memory is done in the
 * calling thread.  tmpfs has no non-blocking path (no FMODE_NOWAIT), so
 * io_uring hands every request to an io-wq worker and aio=threads to a
 * pool thread: two thread wake-ups (there and back) around a copy of a
 * few microseconds.  For a client that keeps one 64 KiB read in flight
 * (a backup tool pulling a fleecing export) those wake-ups were most of
 * the server's part of each round trip.  Up to 256 KiB (a backup
 * client's merged runs of dirty clusters) the copy still costs less than
 * the hop; larger reads go to the workers, beside the loop, as
 * io_uring's large reads do.  Writes: below.
 */
#define INLINE_MEM_MAX (256 * 1024)

/*
 * Writes to a file in memory are done in the calling thread too, up to
 * 64 KiB (a guest's write, a copy-before-write filter's copy of a 64 KiB
 * cluster) and INLINE_WRITES_PER_POLL of them between two polls of the
 * thread's loop.  A guest write during fleecing is the copy's read, the
 * copy's write to the target, then the guest's own write: with the writes
 * in io-wq that was four thread wake-ups (there and back, twice) on the
 * guest's path, each of which could wait a scheduler's slice for a CPU
 * when something else held it (the pull beside it, another process), and
 * those waits made the guest's p99 (docs/performance.md, issue 13).  The
 * budget keeps a coroutine that copies (a block job) from running its
 * whole copy in one go while nothing else in the loop runs: past it, its
 * writes go through the engine and it yields as before.  Larger writes
 * (a job's chunks grow past 64 KiB at once) keep the engine: they take
 * longer than the hop saves, and allocating many pages may wait for
 * reclaim.  Writes that a background frame sends to the pool at idle
 * class (strata/pool-class.h) stay there.
 *
 * Only in the main loop's thread, and only while no block job is busy
 * (its coroutine running or about to: a job that copies, not one that
 * waits, as a fleecing checkpoint's sync=none backup does): a job whose
 * last chunks were all written here would run to its end inside the
 * round that resumed it, and its events would reach a QMP client before
 * the return of the command that resumed it (qmp-backup-on-error with
 * TMPDIR=/dev/shm), unlike QEMU 7.2 there.  The job list is the main
 * thread's, hence the first condition.
 */
#define INLINE_WRITE_MAX (64 * 1024)
#define INLINE_WRITES_PER_POLL 4

static __thread uint64_t inline_poll;
static __thread unsigned inline_writes;

bool file_read_inline(const FileState *s, AioOp op, const IOVec *v)
{
    return s->in_memory && op == AIO_OP_READ && s->aio != AIO_NATIVE &&
           !(s->open_flags & O_DIRECT) && v->size <= INLINE_MEM_MAX;
}

/* Whether this write is done here (takes one of the poll's budget). */
bool file_write_inline(const FileState *s, AioOp op, const IOVec *v)
{
    if (!s->in_memory || op != AIO_OP_WRITE || s->aio == AIO_NATIVE ||
        (s->open_flags & O_DIRECT) || v->size > INLINE_WRITE_MAX ||
        !loop_in_main_thread() || job_any_busy()) {
        return false;
    }
    uint64_t poll = loop_poll_count();
    if (poll != inline_poll) {
        inline_poll = poll;
        inline_writes = 0;
    }
    if (inline_writes >= INLINE_WRITES_PER_POLL) {
        return false;
    }
    inline_writes++;
    return true;
}

/* aio_co_rw() of a request done in this thread (file_*_inline). */
int64_t file_rw_here(FileState *s, AioOp op, int64_t offset,
                            const IOVec *v)
{
    for (;;) {
        ssize_t n = op == AIO_OP_WRITE
                    ? pwritev(s->fd, v->iov, v->niov, offset)
                    : preadv(s->fd, v->iov, v->niov, offset);
        if (n >= 0 || errno != EINTR) {
            return n >= 0 ? n : -errno;
        }
    }
}

