/*
 * Live saves: the pass loop, its stopping rule, and the pass writer
 * (migration/live-save.h, docs/migration.md "Live save").
 *
 * The one-pass save of a stopped VM stays mr_save (channels.c); a live
 * save lays the file out the same way (mr_layout, the same stream pieces)
 * and writes its pages here, because a later pass must also undo what an
 * earlier one stored: a page that became zero loses its bit and its bytes.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <liburing.h>

#include "strata/loop.h"
#include "live-save.h"
#include "strata/device-state.h"
#include "mr-internal.h"

/* pages per unit of work: a multiple of MR_WORD_BITS, so no two threads
 * share a word of a bitmap */
#define CHUNK_PAGES 1024u
/* zero stretches shorter than this inside a run are written as zeros */
#define MERGE_GAP 64u

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
/*
 * Writes in flight per channel with direct-io.  A later pass writes
 * scattered pages, mostly one 4 KiB write each: one blocking pwrite at a
 * time per channel (4 in flight) wrote them slower than a guest writing
 * random pages at 50 MiB/s dirtied them, and a 4 GiB live save stopped
 * converging (docs/performance.md "Live save downtime").
 */
#define PASS_DEPTH 32u
#define PASS_DEPTH_MAX 256u

/* ---- when to stop iterating ---- */

void live_plan_init(LivePlan *p, uint64_t downtime_limit_ms)
{
    memset(p, 0, sizeof(*p));
    p->downtime_limit_ms = downtime_limit_ms;
    p->prev_dirty = UINT64_MAX;
    p->expected_ms = downtime_limit_ms;
}

LiveDecision live_plan_after_pass(LivePlan *p, uint64_t pass_bytes,
                                  int64_t pass_ns, uint64_t dirty_bytes)
{
    p->passes++;
    /*
     * The cost of a byte is taken from the last pass, flush included: the
     * passes after the first write scattered pages, as the last one will,
     * and a small pass carries the fixed costs (the flush's latency) that
     * the last one has too, so its higher cost per byte is the right one.
     */
    if (pass_bytes && pass_ns > 0) {
        p->ns_per_byte = (double)pass_ns / (double)pass_bytes;
    }
    double ms = (double)dirty_bytes * p->ns_per_byte / 1e6;
    p->expected_ms = (uint64_t)ms;
    if ((double)p->expected_ms < ms) {
        p->expected_ms++;                   /* rounded up */
    }
    if (dirty_bytes >= p->prev_dirty) {
        p->stalls++;
    } else {
        p->stalls = 0;
    }
    p->prev_dirty = dirty_bytes;
    if (dirty_bytes == 0) {
        return LIVE_SWITCHOVER_CONVERGED;
    }
    /*
     * Not on the first pass's cost: it writes the RAM in order, many
     * times cheaper a byte than the scattered dirty pages of the others
     * (1 GiB with direct-io and a guest writing 50 MiB/s: 154 ms
     * expected from it, 1265 taken).
     */
    if (p->passes >= 2 && p->expected_ms <= p->downtime_limit_ms) {
        return LIVE_SWITCHOVER_CONVERGED;
    }
    if (p->stalls >= LIVE_MAX_STALLS) {
        return LIVE_SWITCHOVER_STALLED;
    }
    if (p->passes >= LIVE_MAX_PASSES) {
        return LIVE_SWITCHOVER_CAP;
    }
    return LIVE_ITERATE;
}

/* ---- the pass writer ---- */

typedef struct PassWork {
    MrBlock *blocks;
    unsigned nb;
    unsigned long *const *set;
    unsigned long **stored;
    MrStats *stats;
    _Atomic uint64_t *remaining;
    MrQueue q;                      /* chunks, failure, max-bandwidth */
    _Atomic uint64_t pages, written, zeroed;
    uint64_t write_max;             /* bytes per blocking write: smaller
                                       through the page cache
                                       (MR_BUFFERED_WRITE_MAX) */
} PassWork;

/* One write in flight: guest memory to the file. */
typedef struct PassReq {
    const uint8_t *buf;
    uint64_t len;
    uint64_t off;
    const char *id;
} PassReq;

typedef struct PassChan {
    PassWork *w;
    int fd;
    GThread *thread;
    /* with direct-io: writes go through an io_uring, depth at a time */
    bool uring;
    struct io_uring ring;
    unsigned depth, inflight;
    unsigned nfree;
    unsigned *free;             /* indexes of free reqs */
    PassReq *reqs;
} PassChan;

/* Aligned for O_DIRECT; what a page that cannot be punched is given. */
static uint8_t zeros[MERGE_GAP * MR_PAGE_SIZE]
    __attribute__((aligned(MR_PAGE_SIZE)));

static void pass_fail(PassWork *w, GError *err)
{
    mr_queue_fail(&w->q, err);
}

/* Clears bit @i; returns whether it was set. */
static bool test_clear_bit(unsigned long *bm, uint64_t i)
{
    unsigned long m = 1ul << (i % MR_WORD_BITS);
    bool was = bm[i / MR_WORD_BITS] & m;
    bm[i / MR_WORD_BITS] &= ~m;
    return was;
}

static bool write_all(PassWork *w, int fd, const uint8_t *buf, uint64_t len,
                      uint64_t off, const char *id)
{
    while (len) {
        ssize_t r = pwrite(fd, buf, MIN(len, w->write_max), (off_t)off);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            GError *err = NULL;
            error_setg_errno(&err, r < 0 ? errno : EIO, "Could not write "
                             "the pages of RAM block '%s' at offset %"
                             G_GUINT64_FORMAT, id, off);
            pass_fail(w, err);
            return false;
        }
        buf += r;
        len -= (uint64_t)r;
        off += (uint64_t)r;
        atomic_fetch_add(&w->stats->transferred, (uint64_t)r);
    }
    return true;
}

/* Handles one completion; a short write's rest is written in place. */
static void pass_complete(PassChan *ch, struct io_uring_cqe *cqe)
{
    unsigned k = (unsigned)io_uring_cqe_get_data64(cqe);
    PassReq *r = &ch->reqs[k];
    int res = cqe->res;

    io_uring_cqe_seen(&ch->ring, cqe);
    ch->inflight--;
    ch->free[ch->nfree++] = k;
    if (res == -EINTR || res == -EAGAIN) {
        res = 0;
    }
    if (res < 0) {
        GError *err = NULL;
        error_setg_errno(&err, -res, "Could not write the pages of RAM block "
                         "'%s' at offset %" G_GUINT64_FORMAT, r->id, r->off);
        pass_fail(ch->w, err);
        return;
    }
    atomic_fetch_add(&ch->w->stats->transferred, (uint64_t)res);
    if ((uint64_t)res < r->len) {
        write_all(ch->w, ch->fd, r->buf + res, r->len - (uint64_t)res,
                  r->off + (uint64_t)res, r->id);
    }
}

/* Submits what is queued and waits for completions until @max in flight. */
static void pass_reap(PassChan *ch, unsigned max)
{
    while (ch->inflight > max) {
        struct io_uring_cqe *cqe;
        int ret = io_uring_submit_and_wait(&ch->ring, 1);
        if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
            GError *err = NULL;
            error_setg_errno(&err, -ret, "Could not wait for the migration "
                             "file's I/O");
            pass_fail(ch->w, err);
            /* nothing more completes: the ring goes with the channel */
            ch->inflight = 0;
            return;
        }
        while (io_uring_peek_cqe(&ch->ring, &cqe) == 0) {
            pass_complete(ch, cqe);
        }
    }
}

/*
 * Writes guest memory to the file: through the channel's io_uring
 * (returns once it is queued; the memory is not changed by the save, and
 * the pass ends with all its writes done), else a blocking pwrite.
 */
static bool pass_write(PassChan *ch, const uint8_t *buf, uint64_t len,
                       uint64_t off, const char *id)
{
    if (!ch->uring) {
        return write_all(ch->w, ch->fd, buf, len, off, id);
    }
    if (!ch->nfree) {
        pass_reap(ch, ch->depth - 1);
    }
    if (mr_queue_failed(&ch->w->q)) {
        return false;
    }
    if (len > (1u << 30)) {
        return write_all(ch->w, ch->fd, buf, len, off, id);
    }
    unsigned k = ch->free[--ch->nfree];
    ch->reqs[k] = (PassReq){ .buf = buf, .len = len, .off = off, .id = id };
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ch->ring);
    while (!sqe) {
        io_uring_submit(&ch->ring);
        sqe = io_uring_get_sqe(&ch->ring);
    }
    io_uring_prep_write(sqe, ch->fd, buf, (unsigned)len, off);
    io_uring_sqe_set_data64(sqe, k);
    ch->inflight++;
    return true;
}

/*
 * Pages [@s, @e) were stored and are zero now: their bytes leave the file
 * (a hole), so that what a guest scrubbed does not stay in the snapshot
 * behind a clear bit.  Zeros are written where holes cannot be punched.
 */
static bool erase_pages(PassWork *w, int fd, MrBlock *b, uint64_t s,
                        uint64_t e)
{
    uint64_t off = b->pages_offset + s * MR_PAGE_SIZE;
    uint64_t len = (e - s) * MR_PAGE_SIZE;

    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)len) == 0) {
        return true;
    }
    while (len) {
        uint64_t n = MIN(len, (uint64_t)sizeof(zeros));
        if (!write_all(w, fd, zeros, n, off, b->id)) {
            return false;
        }
        off += n;
        len -= n;
    }
    return true;
}

static uint64_t next_set(const unsigned long *set, uint64_t i, uint64_t e)
{
    while (i < e) {
        unsigned long word = set[i / MR_WORD_BITS] >> (i % MR_WORD_BITS);
        if (word) {
            return MIN(e, i + (uint64_t)__builtin_ctzl(word));
        }
        i = (i / MR_WORD_BITS + 1) * MR_WORD_BITS;
    }
    return e;
}

static bool pass_chunk(PassChan *ch, MrBlock *b,
                       const unsigned long *set, unsigned long *stored,
                       uint64_t s, uint64_t e)
{
    PassWork *w = ch->w;
    int fd = ch->fd;
    uint64_t handled = 0, written = 0, zeroed = 0, dup = 0;
    uint64_t i = next_set(set, s, e);

    if (i < e && s % MR_WORD_BITS == 0) {
        /* a full chunk (a first or untracked pass): map it in one call */
        bool full = true;
        uint64_t kend = (e + MR_WORD_BITS - 1) / MR_WORD_BITS;
        for (uint64_t k = s / MR_WORD_BITS; k < kend; k++) {
            full = full && set[k] == ~0ul;
        }
        if (full) {
            (void)madvise(b->host + s * MR_PAGE_SIZE, (e - s) * MR_PAGE_SIZE,
                          MADV_POPULATE_READ);
        }
    }
    while (i < e) {
        if (mr_page_is_zero(b->host + i * MR_PAGE_SIZE)) {
            uint64_t j = i, was = 0;
            while (j < e && mr_test_bit(set, j) &&
                   mr_page_is_zero(b->host + j * MR_PAGE_SIZE)) {
                was += test_clear_bit(stored, j);
                j++;
            }
            if (was && !erase_pages(w, fd, b, i, j)) {
                return false;
            }
            handled += j - i;
            dup += j - i;
            zeroed += was;
            i = next_set(set, j, e);
            continue;
        }
        /* a run of pages of the set, with short zero stretches */
        uint64_t j = i, last = i;
        while (j < e && mr_test_bit(set, j) && j - last <= MERGE_GAP) {
            if (!mr_page_is_zero(b->host + j * MR_PAGE_SIZE)) {
                last = j;
            }
            j++;
        }
        for (uint64_t k = i; k <= last; k++) {
            if (mr_page_is_zero(b->host + k * MR_PAGE_SIZE)) {
                /* written as zeros below: the old bytes go too */
                zeroed += test_clear_bit(stored, k);
                dup++;
            } else {
                mr_set_bit(stored, k);
                written++;
            }
        }
        uint64_t len = (last + 1 - i) * MR_PAGE_SIZE;
        if (!pass_write(ch, b->host + i * MR_PAGE_SIZE, len,
                        b->pages_offset + i * MR_PAGE_SIZE, b->id)) {
            return false;
        }
        mr_queue_throttle(&w->q, len);
        handled += last + 1 - i;
        /* the zero pages after the run's last data page: looked at again */
        i = next_set(set, last + 1, e);
    }
    atomic_fetch_add(&w->pages, handled);
    atomic_fetch_add(&w->written, written);
    atomic_fetch_add(&w->zeroed, zeroed);
    atomic_fetch_add(&w->stats->normal, written);
    atomic_fetch_add(&w->stats->duplicate, dup);
    atomic_fetch_add(&w->stats->done_bytes, handled * MR_PAGE_SIZE);
    if (w->remaining) {
        atomic_fetch_sub(w->remaining, handled * MR_PAGE_SIZE);
    }
    return true;
}

static gpointer pass_chan_run(gpointer opaque)
{
    PassChan *ch = opaque;
    PassWork *w = ch->w;
    unsigned bi;
    uint64_t s, e;

    if (ch->uring) {
        ch->reqs = g_new(PassReq, ch->depth);
        ch->free = g_new(unsigned, ch->depth);
        for (unsigned k = 0; k < ch->depth; k++) {
            ch->free[ch->nfree++] = k;
        }
    }
    while (mr_queue_next(&w->q, &bi, &s, &e)) {
        MrBlock *b = &w->blocks[bi];
        if (!pass_chunk(ch, b, w->set[bi], w->stored[bi], s, e)) {
            break;
        }
        if (ch->uring) {
            /* a chunk's writes go now; remaining counts them as done */
            io_uring_submit(&ch->ring);
        }
    }
    if (ch->uring) {
        /* the pass (and its flush) follows only once every write is done */
        pass_reap(ch, 0);
        io_uring_queue_exit(&ch->ring);
        g_free(ch->reqs);
        g_free(ch->free);
    }
    return NULL;
}

bool live_write_pass(const MrTarget *t, MrBlock *blocks, unsigned nb,
                     unsigned long *const *set, unsigned long **stored,
                     const MrParams *p, bool throttle_on, MrStats *stats,
                     atomic_bool *cancel, _Atomic uint64_t *remaining,
                     LivePassResult *res, GError **errp)
{
    PassWork w = {
        .blocks = blocks, .nb = nb, .set = set, .stored = stored,
        .stats = stats, .remaining = remaining,
        .write_max = p->direct_io ? (uint64_t)1 << 30 : MR_BUFFERED_WRITE_MAX,
    };
    unsigned n = MAX(1u, MIN(p->channels, t->nb_chan));
    PassChan *ch = g_new0(PassChan, n);

    mr_queue_init(&w.q, blocks, nb, set, CHUNK_PAGES, cancel,
                  throttle_on ? p->max_bandwidth : 0);
    /*
     * io_uring only with O_DIRECT: through the page cache a write is a copy
     * (STRATA_MIGRATION_SYNC_IO=1: blocking always, as the one-pass save;
     * STRATA_MIGRATION_PASS_DEPTH: writes in flight, 1-256, comparisons).
     */
    const char *dv = g_getenv("STRATA_MIGRATION_PASS_DEPTH");
    unsigned depth = dv ? (unsigned)g_ascii_strtoull(dv, NULL, 10) : 0;
    if (depth < 1 || depth > PASS_DEPTH_MAX) {
        depth = PASS_DEPTH;
    }
    bool uring = p->direct_io && !g_getenv("STRATA_MIGRATION_SYNC_IO");
    for (unsigned i = 0; i < n; i++) {
        ch[i].w = &w;
        ch[i].fd = t->chan_fds[i];
        ch[i].depth = depth;
        ch[i].uring = uring &&
                      io_uring_queue_init(depth, &ch[i].ring, 0) == 0;
        ch[i].thread = g_thread_new("strata-mig-pass", pass_chan_run, &ch[i]);
    }
    for (unsigned i = 0; i < n; i++) {
        g_thread_join(ch[i].thread);
    }
    g_free(ch);
    if (res) {
        res->pages = atomic_load(&w.pages);
        res->written = atomic_load(&w.written);
        res->zeroed = atomic_load(&w.zeroed);
    }
    return mr_queue_finish(&w.q, errp);
}

/* ---- the whole save ---- */

static bool flush(int fd, GError **errp)
{
    if (fdatasync(fd) < 0) {
        error_setg_errno(errp, errno, "Could not flush the migration file");
        return false;
    }
    return true;
}

static void set_all(unsigned long *bm, uint64_t pages)
{
    uint64_t words = mr_bitmap_bytes(pages) / sizeof(unsigned long);
    memset(bm, 0xff, words * sizeof(unsigned long));
    if (pages % MR_WORD_BITS) {
        bm[words - 1] = (1ul << (pages % MR_WORD_BITS)) - 1;
    }
}

static uint64_t count_bits(unsigned long *const *set, MrBlock *blocks,
                           unsigned nb)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < nb; i++) {
        uint64_t words = mr_bitmap_bytes(mr_block_pages(&blocks[i])) /
                         sizeof(unsigned long);
        for (uint64_t k = 0; k < words; k++) {
            n += (uint64_t)__builtin_popcountl(set[i][k]);
        }
    }
    return n;
}

/* The stream head and the block entries, in a file of its final size. */
static bool begin_file(const MrTarget *t, MrBlock *blocks, unsigned nb,
                       uint64_t *end, MrStats *stats, GError **errp)
{
    GByteArray *tail = mr_stream_tail();
    struct stat st;

    *end = mr_layout(blocks, nb, t->offset);
    uint64_t file_end = *end + tail->len;
    g_byte_array_unref(tail);
    /* as mr_save: O_DIRECT writes inside a file do not serialize */
    if (fstat(t->fd, &st) == 0 && (uint64_t)st.st_size < file_end &&
        ftruncate(t->fd, (off_t)file_end) < 0) {
        error_setg_errno(errp, errno, "Could not size the migration file");
        return false;
    }
    if (!mr_put_bytes(t->fd, mr_stream_head(blocks, nb), t->offset, stats,
                      errp)) {
        return false;
    }
    for (unsigned i = 1; i < nb; i++) {
        const MrBlock *prev = &blocks[i - 1];
        if (!mr_put_bytes(t->fd, mr_block_entry(&blocks[i]),
                          prev->pages_offset + prev->used, stats, errp)) {
            return false;
        }
    }
    return true;
}

bool live_save(const MrTarget *t, MrBlock *blocks, unsigned nb,
               RamBlock *const *ram, const MrParams *p,
               uint64_t downtime_limit_ms, const LiveHooks *hooks,
               MrStats *stats, LiveStats *live, atomic_bool *cancel,
               GError **errp)
{
    unsigned long **set = g_new0(unsigned long *, nb);
    unsigned long **stored = g_new0(unsigned long *, nb);
    bool *tracked = g_new0(bool, nb);
    bool any_tracked = false, ok = false;
    uint64_t end, untracked_bytes = 0;
    LivePlan plan;
    LivePassResult res;

    live_plan_init(&plan, downtime_limit_ms);
    atomic_store(&live->syncs, 1);          /* the setup's, as QEMU counts */
    atomic_store(&live->expected_ms, downtime_limit_ms);
    for (unsigned i = 0; i < nb; i++) {
        uint64_t bytes = mr_bitmap_bytes(mr_block_pages(&blocks[i]));
        set[i] = g_malloc0(bytes);
        stored[i] = g_malloc0(bytes);
        tracked[i] = ram && ram[i] && ram_block_logging(ram[i]);
        any_tracked = any_tracked || tracked[i];
        if (!tracked[i]) {
            untracked_bytes += blocks[i].used;
        }
    }
    if (!begin_file(t, blocks, nb, &end, stats, errp)) {
        goto out;
    }
    /* iterative device state rounds are taken while the guest runs too */
    if (p->devstate &&
        !ds_save_begin(p->devstate, t->fd, end, stats, cancel, errp)) {
        goto out;
    }

    /* the passes with the VM running (none if nothing is tracked) */
    int64_t last_sync = clock_ns();
    for (unsigned i = 0; i < nb && any_tracked; i++) {
        set_all(set[i], mr_block_pages(&blocks[i]));
    }
    while (any_tracked) {
        int64_t t0 = clock_ns();
        uint64_t owed = count_bits(set, blocks, nb);
        atomic_store(&live->remaining, owed * MR_PAGE_SIZE);
        if (!live_write_pass(t, blocks, nb, set, stored, p, true, stats,
                             cancel, &live->remaining, &res, errp) ||
            !flush(t->fd, errp)) {
            goto out;
        }
        int64_t pass_ns = clock_ns() - t0;
        /*
         * The sync: the pages marked since the previous one.  Untracked
         * blocks wait for the last pass, with the guest stopped.
         */
        uint64_t dirty = 0;
        for (unsigned i = 0; i < nb; i++) {
            memset(set[i], 0, mr_bitmap_bytes(mr_block_pages(&blocks[i])));
            if (tracked[i]) {
                int64_t n = ram_block_log_sync(ram[i], set[i], errp);
                if (n < 0) {
                    goto out;
                }
                dirty += (uint64_t)n;
            }
        }
        int64_t now = clock_ns();
        if (now > last_sync) {
            atomic_store(&live->dirty_rate,
                         (uint64_t)((double)dirty * 1e9 /
                                    (double)(now - last_sync)));
        }
        last_sync = now;
        atomic_store(&live->remaining, dirty * MR_PAGE_SIZE);
        hooks->pass(hooks->opaque, atomic_fetch_add(&live->syncs, 1) + 1);
        LiveDecision d = live_plan_after_pass(&plan, owed * MR_PAGE_SIZE,
                                              pass_ns, dirty * MR_PAGE_SIZE +
                                              untracked_bytes);
        atomic_store(&live->expected_ms, plan.expected_ms);
        if (d != LIVE_ITERATE) {
            break;
        }
        if (atomic_load(cancel)) {
            error_setg(errp, "Migration was cancelled");
            goto out;
        }
    }

    atomic_store(&live->precopy_bytes, atomic_load(&stats->transferred));
    if (!hooks->wait_switchover(hooks->opaque)) {
        error_setg(errp, "Migration was cancelled");
        goto out;
    }
    /*
     * The guest is stopped and the monitor has put its last marks in the
     * log: the pages still owed plus the last ones complete the RAM.
     */
    for (unsigned i = 0; i < nb; i++) {
        if (tracked[i]) {
            if (ram_block_log_sync(ram[i], set[i], errp) < 0) {
                goto out;
            }
        } else {
            set_all(set[i], mr_block_pages(&blocks[i]));
        }
    }
    hooks->pass(hooks->opaque, atomic_fetch_add(&live->syncs, 1) + 1);
    atomic_store(&live->remaining, count_bits(set, blocks, nb) *
                 MR_PAGE_SIZE);
    /* the guest waits: no max-bandwidth now (QEMU lifts it there too) */
    if (!live_write_pass(t, blocks, nb, set, stored, p, false, stats, cancel,
                         &live->remaining, &res, errp)) {
        goto out;
    }
    for (unsigned i = 0; i < nb; i++) {
        if (!mr_pwrite_all(t->fd, stored[i],
                           mr_bitmap_bytes(mr_block_pages(&blocks[i])),
                           blocks[i].bitmap_offset, stats, errp)) {
            goto out;
        }
    }
    /* the streams' last rounds come now, with the guest stopped */
    if ((p->devstate
         ? !ds_save_tail(p->devstate, t->fd, end, stats, cancel, errp)
         : !mr_put_bytes(t->fd, mr_stream_tail(), end, stats, errp)) ||
        !flush(t->fd, errp)) {
        goto out;
    }
    ok = true;
out:
    ds_save_end(p->devstate);
    for (unsigned i = 0; i < nb; i++) {
        g_free(set[i]);
        g_free(stored[i]);
    }
    g_free(set);
    g_free(stored);
    g_free(tracked);
    return ok;
}
