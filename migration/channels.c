/*
 * Page channels: the threads that move RAM pages between guest memory and
 * the file, each on its own descriptor (strata/mapped-ram.h).
 *
 * The pages of all blocks are cut into batches of BATCH_PAGES; channels
 * take the next batch from a shared counter (MrQueue, work-queue.c, as a
 * live save's passes do), so they write disjoint, mostly distant ranges
 * in parallel.  Within a batch, runs of non-zero
 * pages (with the short zero stretches between them, see save_batch) are
 * written with one request each straight from guest memory (page aligned,
 * so O_DIRECT needs no bounce buffer); longer zero stretches are left as
 * holes; the bits of zero pages stay clear.  A batch is a multiple of the
 * bitmap word, so channels never share a word.
 *
 * With direct-io each channel submits its requests through an io_uring of
 * its own and keeps up to QUEUE_DEPTH of them in flight: it scans (save)
 * or sets up (load) its next batch while the last ones are on the disk.
 * Through the page cache, or where the kernel refuses io_uring, a channel
 * does one blocking pwritev / preadv at a time; a save through the page
 * cache writes in pieces of MR_BUFFERED_WRITE_MAX (mr-internal.h says
 * why) and starts each batch's writeback as soon as it is copied.
 *
 * A load into memory that has a usable descriptor (a memfd, a shared
 * file) reads into bounce buffers, and one channel at a time per block
 * writes them into the descriptor (see LOAD_BUFFERS and the comment
 * after it).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <liburing.h>

#include "strata/device-state.h"
#include "strata/loop.h"
#include "strata/mapped-ram.h"
#include "mr-internal.h"

#define BATCH_PAGES 1024u        /* 4 MiB; a multiple of the word bits */
/*
 * Requests in flight per channel (with io_uring).  One per channel left
 * the disk idle between a request's end and the next one's start; 8 x 4
 * channels keep it busy (docs/performance.md "Migration to a file").
 * Deeper queues do not make lone zero pages cheap as holes: with 64 in
 * flight, a 2 GiB save with every zero page a hole took 2x as long as
 * the merged runs (same place).
 */
#define QUEUE_DEPTH 8u
/* the most STRATA_MIGRATION_QUEUE_DEPTH may ask for */
#define QUEUE_MAX 64u
/*
 * A load through the memory's descriptor reads a run in pieces of at most
 * this many pages into bounce buffers, which are then written into the
 * memory.
 */
#define LOAD_PIECE 256u
/*
 * Bounce buffers of a load through the memory's descriptor, over all
 * channels (LOAD_BUFFERS x LOAD_PIECE pages: 32 MiB): enough for every
 * channel's QUEUE_DEPTH reads in flight on 4 channels.  A channel that
 * finds none free waits until one has been written.
 */
#define LOAD_BUFFERS 32u
/*
 * A load into memory with a usable descriptor writes the pages through
 * it (no page clearing, no page tables), on any number of channels, but
 * only one channel at a time writes into a block: shmem takes the file's
 * lock exclusively for every write (shmem_file_write_iter), so channels
 * that all wrote queued on it one at a time (2 GiB on 4 channels all
 * through the fd took 8.7 s, through the mapping 5.4 s, loaded machine;
 * that is why multifd restores used the mapping before).  Now a channel
 * whose read finished queues the buffer for the block (Writer) and
 * writes what is queued if no other channel is writing (a trylock, never
 * a wait); the others go back to their reads.  One channel writes its
 * own buffers, as before.  A writer thread per block measured the same
 * CPU and added a thread hop per buffer; UFFDIO_COPY (parallel, no file
 * lock; STRATA_MIGRATION_LOAD_UFFD=1) the same CPU too.  2 GiB on 4
 * channels: 0.62-0.75 s of CPU per GiB against 0.94-1.25 through the
 * mapping, 8,300 page faults against 524,000 (docs/performance.md
 * "Migration to a file", "Multifd restore through the memory's
 * descriptor").  The mapping stays for memory without a usable
 * descriptor (anonymous, private, hugetlbfs, read-only, sealed) and
 * under STRATA_MIGRATION_LOAD_VIA_MAP=1.
 */
typedef struct Work {
    MrBlock *blocks;
    unsigned nb_blocks;
    unsigned long **bitmaps;    /* per block; NULL: block not handled */
    bool load;
    const MrParams *p;
    MrStats *stats;
    atomic_bool *cancel;
    MrQueue q;                  /* batches, failure, max-bandwidth */
    unsigned depth;             /* requests in flight per io_uring channel */
    uint64_t merge_gap;         /* a save writes shorter zero stretches */
    struct Writer **writers;    /* load: per block, its Writer when the
                                   pages go through its fd, else NULL */
    uint64_t piece;             /* pages per request through the fd */
    GAsyncQueue *bufs;          /* free bounce buffers (uint8_t *) */
    atomic_uint nb_bufs;        /* handed out of buf_base so far */
    uint8_t *buf_base;          /* max_bufs buffers, one after the other
                                   (registered with each channel's ring) */
    unsigned max_bufs;
    bool write_gaps;            /* zero pages of new memory written too */
    uint64_t write_max;         /* bytes per blocking write of a save */
    bool kick;                  /* a buffered save starts the writeback of
                                   each batch once it is copied */
} Work;

/*
 * A piece for a block's Writer: stored pages in @buf (the pages of
 * [first, first + pages) whose bit is set, each at its index), or with
 * @buf NULL a zero range to make a hole.
 */
typedef struct Piece {
    uint64_t first;
    uint64_t pages;
    uint8_t *buf;
} Piece;

/*
 * The writes into one block's memory during a load: pieces queued by the
 * channels, written by whichever channel holds the lock.
 */
typedef struct Writer {
    Work *w;
    MrBlock *b;
    unsigned long *bm;
    /*
     * The memory held data before the load (SEEK_DATA found some): zero
     * pages must be punched out.  A new memfd is all hole, and the pages
     * not stored are left alone, never written nor punched.
     */
    bool had_data;
    GAsyncQueue *q;             /* Piece *: queued, not written yet */
    GMutex lock;                /* held by the channel that writes */
    int uffd;                   /* >= 0: channels copy with UFFDIO_COPY */
} Writer;

static void writer_drain(struct Writer *wr);

/*
 * One request of a channel: a run of pages of one block, read or written
 * in one piece (resubmitted from where it stopped after a short transfer).
 */
typedef struct Req {
    MrBlock *b;
    unsigned long *bm;          /* the block's bitmap: load clears the
                                   pages of the run whose bit is clear */
    uint64_t first;             /* page index */
    uint64_t pages;
    uint64_t done;              /* bytes transferred so far */
    uint8_t *buf;               /* a bounce buffer when the load goes
                                   through the block's fd, else NULL */
    struct Req *next_free;
} Req;

typedef struct Chan {
    Work *w;
    unsigned index;
    int fd;
    GThread *thread;
    /*
     * With io_uring (direct-io) a channel keeps up to QUEUE_DEPTH
     * requests on the device and scans its next batch while they run;
     * without it (page cache, or a kernel that refuses io_uring) each
     * request is a blocking pwritev / preadv.
     */
    bool uring;
    bool fixed;                 /* the bounce buffers are registered */
    struct io_uring ring;
    unsigned inflight;
    Req *free;
    Req reqs[QUEUE_MAX];
} Chan;

static uint8_t *req_buf(const Req *r)
{
    return (r->buf ? r->buf : r->b->host + r->first * MR_PAGE_SIZE) +
           r->done;
}

static uint64_t req_left(const Req *r)
{
    return r->pages * MR_PAGE_SIZE - r->done;
}

static uint64_t req_off(const Req *r)
{
    return r->b->pages_offset + r->first * MR_PAGE_SIZE + r->done;
}

static void req_error(Work *w, const Req *r, int err)
{
    GError *e = NULL;

    if (err) {
        error_setg_errno(&e, err, "Could not %s the pages of RAM block '%s' "
                         "at offset %" G_GUINT64_FORMAT,
                         w->load ? "read" : "write", r->b->id, req_off(r));
    } else {
        error_setg(&e, "Migration file ends inside the pages of RAM block "
                   "'%s' (offset %" G_GUINT64_FORMAT ")", r->b->id,
                   req_off(r));
    }
    mr_queue_fail(&w->q, e);
}

/* Gives a request's slot back, and its bounce buffer if it still has one. */
static void req_release(Chan *ch, Req *r)
{
    if (r->buf) {
        g_async_queue_push(ch->w->bufs, r->buf);
        r->buf = NULL;
    }
    r->next_free = ch->free;
    ch->free = r;
}

/*
 * Experiment (STRATA_MIGRATION_LOAD_UFFD=1): the channel puts the
 * stored pages of a new memory's piece in place with UFFDIO_COPY, which
 * allocates, copies and maps each page under no file-wide lock, so
 * channels fill one memfd in parallel.  False: not done (the piece is
 * queued for pwrite).
 */
static bool uffd_put(struct Writer *wr, const Req *r)
{
    for (uint64_t k = 0; k < r->pages;) {
        bool set = mr_test_bit(r->bm, r->first + k);
        uint64_t j = k + 1;
        while (j < r->pages && mr_test_bit(r->bm, r->first + j) == set) {
            j++;
        }
        if (set) {
            struct uffdio_copy c = {
                .dst = (uintptr_t)(r->b->host + (r->first + k) * MR_PAGE_SIZE),
                .src = (uintptr_t)(r->buf + k * MR_PAGE_SIZE),
                .len = (j - k) * MR_PAGE_SIZE,
            };
            while (ioctl(wr->uffd, UFFDIO_COPY, &c) < 0) {
                if (c.copy > 0) {
                    c.dst += (uint64_t)c.copy;
                    c.src += (uint64_t)c.copy;
                    c.len -= (uint64_t)c.copy;
                    c.copy = 0;
                    continue;
                }
                if (errno != EAGAIN && errno != EINTR) {
                    /* pages before k are in place; pwrite redoes all */
                    return false;
                }
            }
            atomic_fetch_add(&wr->w->stats->via_fd, j - k);
        }
        k = j;
    }
    return true;
}

/*
 * A finished load request: whatever the file had in the gaps of the run
 * (pages not stored, read along to save a request), those pages are zero.
 * Read into the mapping, they are cleared there; read into a bounce
 * buffer, the buffer is queued for the block's Writer, which writes the
 * stored pages only.
 */
static void req_finish(Chan *ch, Req *r)
{
    Work *w = ch->w;

    if (w->load) {
        uint64_t gaps = 0;
        for (uint64_t k = 0; k < r->pages; k++) {
            if (!mr_test_bit(r->bm, r->first + k)) {
                if (!r->buf) {
                    memset(r->b->host + (r->first + k) * MR_PAGE_SIZE, 0,
                           MR_PAGE_SIZE);
                }
                gaps++;
            }
        }
        atomic_fetch_add(&w->stats->normal, r->pages - gaps);
        atomic_fetch_add(&w->stats->duplicate, gaps);
        Writer *wr = r->buf ? w->writers[r->b - w->blocks] : NULL;
        if (wr && wr->uffd >= 0 && uffd_put(wr, r)) {
            g_async_queue_push(w->bufs, r->buf);
            r->buf = NULL;
        } else if (r->buf) {
            Piece *pc = g_new(Piece, 1);
            *pc = (Piece){ .first = r->first, .pages = r->pages,
                           .buf = r->buf };
            r->buf = NULL;
            wr = w->writers[r->b - w->blocks];
            g_async_queue_push(wr->q, pc);
            writer_drain(wr);
        }
    }
    r->next_free = ch->free;
    ch->free = r;
}

static void req_prep(Chan *ch, Req *r)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ch->ring);

    /* the ring has room for every request: only unsubmitted ones fill it */
    while (!sqe) {
        io_uring_submit(&ch->ring);
        sqe = io_uring_get_sqe(&ch->ring);
    }
    if (ch->w->load) {
        if (r->buf && ch->fixed) {
            uint64_t bytes = ch->w->piece * MR_PAGE_SIZE;
            io_uring_prep_read_fixed(sqe, ch->fd, req_buf(r),
                                     (unsigned)req_left(r), req_off(r),
                                     (int)((uint64_t)(r->buf -
                                                      ch->w->buf_base) /
                                           bytes));
            io_uring_sqe_set_data(sqe, r);
            return;
        }
        io_uring_prep_read(sqe, ch->fd, req_buf(r), (unsigned)req_left(r),
                           req_off(r));
    } else {
        io_uring_prep_write(sqe, ch->fd, req_buf(r), (unsigned)req_left(r),
                            req_off(r));
    }
    io_uring_sqe_set_data(sqe, r);
}

/*
 * A request's result: finished (true: its slot is free again, failed or
 * not) or resubmitted for the rest after a short transfer (false).
 */
static bool req_result(Chan *ch, Req *r, int res)
{
    Work *w = ch->w;

    if (res == -EINTR || res == -EAGAIN) {
        req_prep(ch, r);
        return false;
    }
    if (res <= 0) {
        req_error(w, r, -res);
        req_release(ch, r);
        return true;
    }
    r->done += (uint64_t)res;
    atomic_fetch_add(&w->stats->transferred, (uint64_t)res);
    if (req_left(r)) {
        req_prep(ch, r);
        return false;
    }
    req_finish(ch, r);
    return true;
}

/*
 * Blocking transfer of a whole request, for channels without io_uring.
 * A save through the page cache writes it in pieces of w->write_max
 * (MR_BUFFERED_WRITE_MAX): small page-cache folios.
 */
static void req_sync(Chan *ch, Req *r)
{
    while (req_left(r)) {
        struct iovec iov = {
            .iov_base = req_buf(r),
            .iov_len = MIN(req_left(r), ch->w->write_max),
        };
        ssize_t res = ch->w->load ? preadv(ch->fd, &iov, 1, (off_t)req_off(r))
                                  : pwritev(ch->fd, &iov, 1,
                                            (off_t)req_off(r));
        if (res < 0 && errno == EINTR) {
            continue;
        }
        if (res <= 0) {
            req_error(ch->w, r, res < 0 ? errno : 0);
            req_release(ch, r);
            return;
        }
        r->done += (uint64_t)res;
        atomic_fetch_add(&ch->w->stats->transferred, (uint64_t)res);
    }
    req_finish(ch, r);
}

/* Handles the completions that are there, without waiting. */
static unsigned chan_poll(Chan *ch)
{
    struct io_uring_cqe *cqe;
    unsigned finished = 0;

    while (io_uring_peek_cqe(&ch->ring, &cqe) == 0) {
        Req *r = io_uring_cqe_get_data(cqe);
        int res = cqe->res;
        io_uring_cqe_seen(&ch->ring, cqe);
        if (req_result(ch, r, res)) {
            ch->inflight--;
            finished++;
        }
    }
    return finished;
}

/*
 * Submits what is queued and handles completions until at least one
 * request has finished.
 */
static void chan_reap(Chan *ch)
{
    unsigned finished = 0;

    while (!finished && ch->inflight) {
        int ret = io_uring_submit_and_wait(&ch->ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            /* the ring itself failed (no memory): nothing more completes */
            GError *e = NULL;
            error_setg_errno(&e, -ret, "Could not wait for the migration "
                             "file's I/O");
            mr_queue_fail(&ch->w->q, e);
            ch->inflight = 0;
            return;
        }
        finished += chan_poll(ch);
    }
}

/* A free request, waiting for one in flight to finish if need be. */
static Req *chan_req(Chan *ch)
{
    if (!ch->free && ch->uring) {
        chan_reap(ch);
    }
    Req *r = ch->free;
    if (r) {
        ch->free = r->next_free;
    }
    return r;
}

/*
 * A free bounce buffer: from the pool, one not used yet while there are
 * any, else the next one written (the channel's own reads in flight are
 * handed on first: they hold buffers too).
 */
static uint8_t *chan_buf(Chan *ch)
{
    Work *w = ch->w;

    for (;;) {
        uint8_t *buf = g_async_queue_try_pop(w->bufs);
        if (buf) {
            return buf;
        }
        unsigned n = atomic_load(&w->nb_bufs);
        while (n < w->max_bufs) {
            if (atomic_compare_exchange_weak(&w->nb_bufs, &n, n + 1)) {
                return w->buf_base + (uint64_t)n * w->piece * MR_PAGE_SIZE;
            }
        }
        if (ch->uring && ch->inflight) {
            chan_reap(ch);
            continue;
        }
        return g_async_queue_pop(w->bufs);
    }
}

/* Queues a run of pages; false once the work has failed. */
static bool chan_queue(Chan *ch, MrBlock *b, unsigned long *bm,
                       uint64_t first, uint64_t pages)
{
    Req *r = chan_req(ch);

    if (!r || mr_queue_failed(&ch->w->q)) {
        if (r) {
            req_release(ch, r);
        }
        return false;
    }
    *r = (Req){ .b = b, .bm = bm, .first = first, .pages = pages };
    if (ch->w->load && ch->w->writers[b - ch->w->blocks]) {
        r->buf = chan_buf(ch);
    }
    if (ch->uring) {
        req_prep(ch, r);
        ch->inflight++;
        /* a throttled channel sleeps next: its request goes first */
        if (ch->w->p->max_bandwidth) {
            io_uring_submit(&ch->ring);
        }
    } else {
        req_sync(ch, r);
    }
    mr_queue_throttle(&ch->w->q, pages * MR_PAGE_SIZE);
    return !mr_queue_failed(&ch->w->q);
}

/*
 * A run of non-zero pages is written in one request, and so are short
 * stretches of zero pages between two runs (fewer than MERGE_GAP): many
 * small writes cost far more than a few zero pages written (on O_DIRECT
 * each is a synchronous device write; through the page cache the
 * writeback splits at every hole).  Their bits stay clear: they are not
 * stored pages, only bytes that happen to be in the file.  Longer zero
 * stretches stay holes.
 */
#define MERGE_GAP 64u

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif

/*
 * Maps a batch of guest memory in one call before it is scanned or read
 * into: a fault per page taken from user space costs more than the I/O
 * (Linux 5.14+; older kernels refuse it and the pages fault one by one).
 */
static void populate(uint8_t *p, uint64_t pages, bool write)
{
    (void)madvise(p, pages * MR_PAGE_SIZE,
                  write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
}

static bool save_batch(Chan *ch, MrBlock *b, unsigned long *bm,
                       uint64_t s, uint64_t e)
{
    Work *w = ch->w;
    uint64_t i = s;

    populate(b->host + s * MR_PAGE_SIZE, e - s, false);
    while (i < e) {
        if (mr_page_is_zero(b->host + i * MR_PAGE_SIZE)) {
            atomic_fetch_add(&w->stats->duplicate, 1);
            i++;
            continue;
        }
        uint64_t j = i, last = i;      /* last: the last non-zero page */
        while (j < e && j - last <= w->merge_gap) {
            if (mr_page_is_zero(b->host + j * MR_PAGE_SIZE)) {
                atomic_fetch_add(&w->stats->duplicate, 1);
            } else {
                mr_set_bit(bm, j);
                atomic_fetch_add(&w->stats->normal, 1);
                last = j;
            }
            j++;
        }
        /* the zero pages counted after the last data page are not written */
        if (!chan_queue(ch, b, bm, i, last + 1 - i)) {
            return false;
        }
        i = j;
    }
    if (w->kick && !ch->uring) {
        /*
         * The batch is in the page cache: its writeback starts now, while
         * the channels copy the next ones, not all at the closing
         * fdatasync (background writeback waits for 10 % of memory to be
         * dirty, more than a save of a few GiB makes).  It does not wait
         * for the writes; an error shows at the fdatasync.
         */
        (void)sync_file_range(ch->fd, (off64_t)(b->pages_offset +
                                                s * MR_PAGE_SIZE),
                              (off64_t)((e - s) * MR_PAGE_SIZE),
                              SYNC_FILE_RANGE_WRITE);
    }
    return true;
}

/* Clears the pages of [p, p + n pages) that are not zero yet. */
static void clear_pages(uint8_t *p, uint64_t n)
{
    for (uint64_t k = 0; k < n; k++, p += MR_PAGE_SIZE) {
        if (!mr_page_is_zero(p)) {
            memset(p, 0, MR_PAGE_SIZE);
        }
    }
}

/*
 * Pages the file does not store are zero.  Shared memory (a memfd, a
 * file) gives them back with MADV_REMOVE, which neither reads nor
 * allocates them; elsewhere (private or huge pages) each page that is not
 * zero yet is cleared, so that untouched memory stays unallocated.
 */
static void zero_pages(MrStats *stats, uint8_t *p, uint64_t n)
{
    atomic_fetch_add(&stats->duplicate, n);
    if (madvise(p, n * MR_PAGE_SIZE, MADV_REMOVE) == 0) {
        return;
    }
    clear_pages(p, n);
}

/* Writes pages [first, first + pages) of the writer's block from @p. */
static bool writer_pwrite(Writer *wr, const uint8_t *p, uint64_t first,
                          uint64_t pages)
{
    uint64_t left = pages * MR_PAGE_SIZE;
    uint64_t off = first * MR_PAGE_SIZE;

    while (left) {
        ssize_t n = pwrite(wr->b->fd, p, left, (off_t)off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            GError *e = NULL;
            error_setg_errno(&e, n < 0 ? errno : EIO, "Could not write the "
                             "pages of RAM block '%s' into its memory at "
                             "offset %" G_GUINT64_FORMAT, wr->b->id, off);
            mr_queue_fail(&wr->w->q, e);
            return false;
        }
        p += n;
        off += (uint64_t)n;
        left -= (uint64_t)n;
    }
    atomic_fetch_add(&wr->w->stats->via_fd, pages);
    return true;
}

/*
 * Zero pages of memory that held data: punched out (a hole, as
 * MADV_REMOVE makes), or cleared through the mapping where the file
 * system cannot punch.
 */
static void writer_hole(Writer *wr, uint64_t first, uint64_t pages)
{
    if (fallocate(wr->b->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)(first * MR_PAGE_SIZE),
                  (off_t)(pages * MR_PAGE_SIZE)) < 0) {
        clear_pages(wr->b->host + first * MR_PAGE_SIZE, pages);
    }
}

/*
 * Puts a piece into the memory.  Into memory that was all hole, only the
 * stored pages are written (a write per run of them): the zero pages read
 * along stay holes.  Into memory that held data, the piece is written
 * whole with its zero pages cleared in the buffer: one write, and
 * existing (perhaps preallocated) pages are overwritten in place rather
 * than punched out one by one.  STRATA_MIGRATION_LOAD_WRITE_GAPS=1 writes
 * whole pieces always (comparisons).
 */
static void writer_put(Writer *wr, Piece *pc)
{
    Work *w = wr->w;

    if (!pc->buf) {
        writer_hole(wr, pc->first, pc->pages);
        return;
    }
    if (wr->had_data || w->write_gaps) {
        for (uint64_t k = 0; k < pc->pages; k++) {
            if (!mr_test_bit(wr->bm, pc->first + k)) {
                memset(pc->buf + k * MR_PAGE_SIZE, 0, MR_PAGE_SIZE);
            }
        }
        writer_pwrite(wr, pc->buf, pc->first, pc->pages);
        return;
    }
    for (uint64_t k = 0; k < pc->pages;) {
        bool set = mr_test_bit(wr->bm, pc->first + k);
        uint64_t j = k + 1;
        while (j < pc->pages && mr_test_bit(wr->bm, pc->first + j) == set) {
            j++;
        }
        if (set && !writer_pwrite(wr, pc->buf + k * MR_PAGE_SIZE,
                                  pc->first + k, j - k)) {
            return;
        }
        k = j;
    }
}

/*
 * Writes what is queued for @wr if no other channel is writing it, until
 * the queue is empty.  The channel that writes checks the queue again
 * after it lets go: a piece queued while it was finishing (whose channel
 * found the lock taken) is not left behind.
 */
static void writer_drain(Writer *wr)
{
    while (g_async_queue_length(wr->q) > 0 && g_mutex_trylock(&wr->lock)) {
        Piece *pc;
        while ((pc = g_async_queue_try_pop(wr->q))) {
            /* after a failure, buffers still go back: channels wait */
            if (!mr_queue_failed(&wr->w->q)) {
                writer_put(wr, pc);
            }
            if (pc->buf) {
                g_async_queue_push(wr->w->bufs, pc->buf);
            }
            g_free(pc);
        }
        g_mutex_unlock(&wr->lock);
    }
}

static bool load_batch(Chan *ch, MrBlock *b, unsigned long *bm,
                       uint64_t s, uint64_t e)
{
    uint64_t i = s;
    Writer *wr = ch->w->writers[b - ch->w->blocks];

    while (i < e) {
        if (!mr_test_bit(bm, i)) {
            uint64_t j = i + 1;
            while (j < e && !mr_test_bit(bm, j)) {
                j++;
            }
            if (!wr) {
                zero_pages(ch->w->stats, b->host + i * MR_PAGE_SIZE, j - i);
            } else {
                /* punches take the file's lock: one writer at a time */
                atomic_fetch_add(&ch->w->stats->duplicate, j - i);
                if (wr->had_data) {
                    Piece *pc = g_new(Piece, 1);
                    *pc = (Piece){ .first = i, .pages = j - i };
                    g_async_queue_push(wr->q, pc);
                    writer_drain(wr);
                }
            }
            i = j;
            continue;
        }
        /* as the save merges short gaps, so does the load: one read */
        uint64_t j = i, last = i;
        while (j < e && j - last <= MERGE_GAP) {
            if (mr_test_bit(bm, j)) {
                last = j;
            }
            j++;
        }
        if (wr) {
            /* read into bounce buffers, then written through the fd */
            for (uint64_t k = i; k <= last; k += ch->w->piece) {
                if (!chan_queue(ch, b, bm, k,
                                MIN(ch->w->piece, last + 1 - k))) {
                    return false;
                }
            }
            i = last + 1;
            continue;
        }
        /*
         * The run's memory is created here, in one call, rather than
         * page by page inside the read's submission (new memory costs
         * more than the disk: docs/performance.md "Migration to a file");
         * zero stretches are not populated, MADV_REMOVE drops them.
         */
        populate(b->host + i * MR_PAGE_SIZE, last + 1 - i, true);
        if (!chan_queue(ch, b, bm, i, last + 1 - i)) {
            return false;
        }
        i = last + 1;
    }
    return true;
}

static gpointer chan_run(gpointer opaque)
{
    Chan *ch = opaque;
    Work *w = ch->w;
    unsigned bi;
    uint64_t s, e;

    /*
     * Only O_DIRECT gains from requests in flight: a buffered write is a
     * copy into the page cache (the writeback does the I/O), and io_uring
     * hands each one to a kernel worker that then fights the others for
     * the file's lock.  STRATA_MIGRATION_SYNC_IO=1 takes the blocking path
     * always (tests, comparisons).
     */
    ch->uring = w->p->direct_io && !g_getenv("STRATA_MIGRATION_SYNC_IO") &&
                io_uring_queue_init(w->depth, &ch->ring, 0) == 0;
    /*
     * Registered buffers are pinned once, not at every read (the pinning
     * was 6 % of a restore's CPU).  It counts against RLIMIT_MEMLOCK: a
     * user that is not root may be refused, then reads pin as before.
     */
    if (ch->uring && w->buf_base && !g_getenv("STRATA_MIGRATION_NO_FIXED")) {
        struct iovec *iov = g_new(struct iovec, w->max_bufs);
        for (unsigned i = 0; i < w->max_bufs; i++) {
            iov[i] = (struct iovec){
                .iov_base = w->buf_base +
                            (uint64_t)i * w->piece * MR_PAGE_SIZE,
                .iov_len = w->piece * MR_PAGE_SIZE,
            };
        }
        ch->fixed = io_uring_register_buffers(&ch->ring, iov,
                                              w->max_bufs) == 0;
        g_free(iov);
    }
    for (unsigned i = 0; i < (ch->uring ? w->depth : 1); i++) {
        ch->reqs[i].next_free = ch->free;
        ch->free = &ch->reqs[i];
    }
    while (mr_queue_next(&w->q, &bi, &s, &e)) {
        MrBlock *b = &w->blocks[bi];
        bool ok = w->load ? load_batch(ch, b, w->bitmaps[bi], s, e)
                          : save_batch(ch, b, w->bitmaps[bi], s, e);
        if (!ok) {
            break;
        }
        if (ch->uring) {
            /* query-migrate's counters follow what has reached the file */
            io_uring_submit(&ch->ring);
            chan_poll(ch);
        }
        /* counted when queued: the bytes are on their way */
        atomic_fetch_add(&w->stats->done_bytes, (e - s) * MR_PAGE_SIZE);
    }
    /* guest memory and the descriptor stay the caller's: finish them all */
    if (ch->uring) {
        while (ch->inflight) {
            chan_reap(ch);
        }
        io_uring_queue_exit(&ch->ring);
    }
    return NULL;
}

/* Runs the batches of the blocks with a bitmap on the channels. */
static bool run_channels(Work *w, const MrTarget *t, GError **errp)
{
    unsigned n = MAX(1u, MIN(w->p->channels, t->nb_chan));
    Chan *ch = g_new0(Chan, n);

    mr_queue_init(&w->q, w->blocks, w->nb_blocks,
                  (unsigned long *const *)w->bitmaps, BATCH_PAGES, w->cancel,
                  w->p->max_bandwidth);
    for (unsigned i = 0; i < n; i++) {
        ch[i].w = w;
        ch[i].index = i;
        ch[i].fd = t->chan_fds[i];
        ch[i].thread = g_thread_new("strata-mig-chan", chan_run, &ch[i]);
    }
    for (unsigned i = 0; i < n; i++) {
        g_thread_join(ch[i].thread);
    }
    /* whatever a channel queued last is written by then; if not, here */
    for (unsigned i = 0; w->load && i < w->nb_blocks; i++) {
        if (w->writers[i]) {
            writer_drain(w->writers[i]);
        }
    }
    g_free(ch);
    return mr_queue_finish(&w->q, errp);
}

/*
 * A number from the environment in [lo, hi], else @def.  For comparisons
 * (bench/migrate-bench --compare-env), not for users:
 *   STRATA_MIGRATION_QUEUE_DEPTH  requests in flight per channel (1-64)
 *   STRATA_MIGRATION_MERGE_GAP    a save writes zero stretches shorter
 *                                 than this inside a run (1: every zero
 *                                 page a hole, as QEMU)
 *   STRATA_MIGRATION_LOAD_PIECE   pages per bounce buffer of a load
 *                                 through the memory's fd (16-1024)
 *   STRATA_MIGRATION_LOAD_BUFFERS how many such buffers (2-256)
 *   STRATA_MIGRATION_NO_FIXED=1   bounce buffers not registered with
 *                                 io_uring (each read pins its buffer)
 *   STRATA_MIGRATION_LOAD_WRITE_GAPS=1  pieces are written whole,
 *                                 zero pages too, into new memory
 *   STRATA_MIGRATION_LOAD_VIA_MAP=1  never through the fd
 *   STRATA_MIGRATION_BUFFERED_WRITE  bytes per write of a save through
 *                                 the page cache (4096 up to 1 GiB)
 *   STRATA_MIGRATION_BUFFERED_KICK=0  no early writeback of its batches
 */
static uint64_t env_num(const char *name, uint64_t lo, uint64_t hi,
                        uint64_t def)
{
    const char *e = g_getenv(name);
    char *end;
    if (!e) {
        return def;
    }
    uint64_t v = g_ascii_strtoull(e, &end, 10);
    return *e && !*end && v >= lo && v <= hi ? v : def;
}

static void work_init(Work *w, MrBlock *blocks, unsigned nb, bool load,
                      const MrParams *p, MrStats *stats, atomic_bool *cancel)
{
    memset(w, 0, sizeof(*w));
    w->blocks = blocks;
    w->nb_blocks = nb;
    w->bitmaps = g_new0(unsigned long *, nb);
    w->load = load;
    w->p = p;
    w->stats = stats;
    w->cancel = cancel;
    w->depth = (unsigned)env_num("STRATA_MIGRATION_QUEUE_DEPTH", 1,
                                 QUEUE_MAX, QUEUE_DEPTH);
    w->merge_gap = env_num("STRATA_MIGRATION_MERGE_GAP", 1, 1u << 20,
                           MERGE_GAP);
    w->writers = g_new0(Writer *, nb);
    w->piece = env_num("STRATA_MIGRATION_LOAD_PIECE", 16, BATCH_PAGES,
                       LOAD_PIECE);
    w->bufs = g_async_queue_new();
    w->max_bufs = (unsigned)env_num("STRATA_MIGRATION_LOAD_BUFFERS", 2, 256,
                                    LOAD_BUFFERS);
    w->write_gaps = g_getenv("STRATA_MIGRATION_LOAD_WRITE_GAPS") != NULL;
    w->write_max = load || p->direct_io
                   ? (uint64_t)1 << 30
                   : env_num("STRATA_MIGRATION_BUFFERED_WRITE", MR_PAGE_SIZE,
                             (uint64_t)1 << 30, MR_BUFFERED_WRITE_MAX);
    w->kick = !load && !p->direct_io &&
              env_num("STRATA_MIGRATION_BUFFERED_KICK", 0, 1, 1);
}

static void work_clear(Work *w)
{
    for (unsigned i = 0; i < w->nb_blocks; i++) {
        g_free(w->bitmaps[i]);
    }
    g_free(w->bitmaps);
    for (unsigned i = 0; i < w->nb_blocks; i++) {
        if (w->writers[i] && w->writers[i]->uffd >= 0) {
            /* closing unregisters: later faults are ordinary ones */
            close(w->writers[i]->uffd);
        }
        if (w->writers[i]) {
            g_mutex_clear(&w->writers[i]->lock);
            g_async_queue_unref(w->writers[i]->q);
            g_free(w->writers[i]);
        }
    }
    g_free(w->writers);
    g_async_queue_unref(w->bufs);
    free(w->buf_base);
}

/*
 * Can a load write @b's pages through its descriptor?  Only into memory
 * that a write fills as the mapping sees it: a descriptor open for
 * writing, no write seal, not hugetlbfs (which has no write()), at least
 * as long as the block.  STRATA_MIGRATION_LOAD_VIA_MAP=1 takes the
 * mapping always (comparisons: bench/migrate-bench --compare-env).
 */
static bool block_fd_usable(const MrBlock *b)
{
    struct statfs sfs;
    struct stat st;

    if (!b->has_fd || b->fd < 0 || g_getenv("STRATA_MIGRATION_LOAD_VIA_MAP")) {
        return false;
    }
    int fl = fcntl(b->fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY) {
        return false;
    }
    int seals = fcntl(b->fd, F_GET_SEALS);
    if (seals > 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE))) {
        return false;
    }
    return fstatfs(b->fd, &sfs) == 0 && sfs.f_type != HUGETLBFS_MAGIC &&
           fstat(b->fd, &st) == 0 && S_ISREG(st.st_mode) &&
           (uint64_t)st.st_size >= b->used;
}

/*
 * Does @b's memory hold any data (not a hole) before the load?  A new
 * memfd or shared file is all hole.  The descriptor's offset, shared with
 * whoever else holds it, is put back.
 */
static bool memory_has_data(const MrBlock *b)
{
    off_t cur = lseek(b->fd, 0, SEEK_CUR);
    off_t d = lseek(b->fd, 0, SEEK_DATA);
    int err = errno;

    if (cur >= 0) {
        (void)lseek(b->fd, cur, SEEK_SET);
    }
    if (d < 0) {
        return err != ENXIO;
    }
    return (uint64_t)d < b->used;
}

/* A userfaultfd with @b's mapping registered for missing pages, or -1. */
static int uffd_open(const MrBlock *b)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
    struct uffdio_api api = { .api = UFFD_API };
    struct uffdio_register reg = {
        .range = { .start = (uintptr_t)b->host, .len = b->used },
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };

    if (fd < 0) {
        return -1;
    }
    if (ioctl(fd, UFFDIO_API, &api) < 0 ||
        ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

bool mr_save(MrTarget *t, MrBlock *blocks, unsigned nb_blocks,
             const MrParams *p, MrStats *stats, atomic_bool *cancel,
             GError **errp)
{
    Work w;
    uint64_t end = mr_layout(blocks, nb_blocks, t->offset);
    bool ok = false;

    work_init(&w, blocks, nb_blocks, false, p, stats, cancel);
    for (unsigned i = 0; i < nb_blocks; i++) {
        w.bitmaps[i] = g_malloc0(mr_bitmap_bytes(mr_block_pages(&blocks[i])));
    }
    /*
     * The file gets its final size at once: O_DIRECT writes that extend a
     * file are serialized on the inode lock (ext4), writes inside it are
     * not.  A larger file (written in place at an offset) keeps its size.
     */
    GByteArray *tail = mr_stream_tail();
    uint64_t file_end = end + tail->len;
    g_byte_array_unref(tail);
    struct stat st;
    if (fstat(t->fd, &st) == 0 && (uint64_t)st.st_size < file_end &&
        ftruncate(t->fd, (off_t)file_end) < 0) {
        error_setg_errno(errp, errno, "Could not size the migration file");
        goto out;
    }
    /* the stream pieces first: a crash leaves no EOF marker behind */
    if (!mr_put_bytes(t->fd, mr_stream_head(blocks, nb_blocks), t->offset,
                      stats, errp)) {
        goto out;
    }
    for (unsigned i = 1; i < nb_blocks; i++) {
        const MrBlock *prev = &blocks[i - 1];
        if (!mr_put_bytes(t->fd, mr_block_entry(&blocks[i]),
                          prev->pages_offset + prev->used, stats, errp)) {
            goto out;
        }
    }
    /* iterative device state rounds are taken while the pages go */
    if (p->devstate &&
        !ds_save_begin(p->devstate, t->fd, end, stats, cancel, errp)) {
        goto out;
    }
    if (!run_channels(&w, t, errp)) {
        goto out;
    }
    for (unsigned i = 0; i < nb_blocks; i++) {
        if (!mr_pwrite_all(t->fd, w.bitmaps[i],
                           mr_bitmap_bytes(mr_block_pages(&blocks[i])),
                           blocks[i].bitmap_offset, stats, errp)) {
            goto out;
        }
    }
    if (p->devstate
        ? !ds_save_tail(p->devstate, t->fd, end, stats, cancel, errp)
        : !mr_put_bytes(t->fd, mr_stream_tail(), end, stats, errp)) {
        goto out;
    }
    if (fdatasync(t->fd) < 0) {
        error_setg_errno(errp, errno, "Could not flush the migration file");
        goto out;
    }
    ok = true;
out:
    ds_save_end(p->devstate);
    work_clear(&w);
    return ok;
}

bool mr_load(MrTarget *t, MrFileInfo *info, const MrParams *p,
             MrStats *stats, atomic_bool *cancel, GError **errp)
{
    Work w;
    bool ok = false;

    work_init(&w, info->blocks, info->nb_blocks, true, p, stats, cancel);
    /* every check before the first guest page is written */
    for (unsigned i = 0; i < info->nb_blocks; i++) {
        MrBlock *b = &info->blocks[i];
        uint64_t pages = mr_block_pages(b);
        uint64_t bytes = mr_bitmap_bytes(pages);
        if (!b->host) {
            continue;
        }
        if (b->bitmap_offset + bytes > info->file_size) {
            error_setg(errp, "Migration file ends inside the bitmap of RAM "
                       "block '%s'", b->id);
            goto out;
        }
        w.bitmaps[i] = g_malloc(bytes);
        ssize_t r = pread(t->fd, w.bitmaps[i], bytes, (off_t)b->bitmap_offset);
        if (r != (ssize_t)bytes) {
            error_setg_errno(errp, r < 0 ? errno : EIO, "Could not read the "
                             "bitmap of RAM block '%s'", b->id);
            goto out;
        }
        atomic_fetch_add(&stats->transferred, bytes);
        if (block_fd_usable(b)) {
            Writer *wr = g_new0(Writer, 1);
            *wr = (Writer){ .w = &w, .b = b, .bm = w.bitmaps[i],
                            .had_data = memory_has_data(b),
                            .q = g_async_queue_new(), .uffd = -1 };
            g_mutex_init(&wr->lock);
            if (!wr->had_data && g_getenv("STRATA_MIGRATION_LOAD_UFFD")) {
                wr->uffd = uffd_open(b);
            }
            w.writers[i] = wr;
        }
        /* the last stored page must lie inside the file */
        for (uint64_t k = bytes / sizeof(unsigned long); k-- > 0;) {
            unsigned long word = w.bitmaps[i][k];
            if (k * MR_WORD_BITS + MR_WORD_BITS > pages) {
                unsigned keep = (unsigned)(pages - k * MR_WORD_BITS);
                if (keep < MR_WORD_BITS) {
                    word &= (1ul << keep) - 1;
                    w.bitmaps[i][k] = word;
                }
            }
            if (word) {
                uint64_t last = k * MR_WORD_BITS + MR_WORD_BITS - 1 -
                                (uint64_t)__builtin_clzl(word);
                if (b->pages_offset + (last + 1) * MR_PAGE_SIZE >
                    info->file_size) {
                    error_setg(errp, "Migration file is truncated: RAM "
                               "block '%s' has pages past its end", b->id);
                    goto out;
                }
                break;
            }
        }
    }
    /* no more buffers than pieces: a small load pins little */
    uint64_t pieces = 0;
    for (unsigned i = 0; i < info->nb_blocks; i++) {
        if (w.writers[i]) {
            pieces += (mr_block_pages(&info->blocks[i]) + w.piece - 1) /
                      w.piece;
        }
    }
    w.max_bufs = (unsigned)MIN((uint64_t)w.max_bufs, MAX(pieces, 2));
    for (unsigned i = 0; i < info->nb_blocks; i++) {
        if (w.writers[i] && !w.buf_base &&
            posix_memalign((void **)&w.buf_base, MR_PAGE_SIZE,
                           w.max_bufs * w.piece * MR_PAGE_SIZE) != 0) {
            w.buf_base = NULL;
            error_setg(errp, "Could not allocate %u MiB of buffers for the "
                       "migration file's pages",
                       (unsigned)(w.max_bufs * w.piece * MR_PAGE_SIZE >> 20));
            goto out;
        }
    }
    ok = run_channels(&w, t, errp);
out:
    work_clear(&w);
    return ok;
}
