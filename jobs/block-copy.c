/*
 * The copy engine (strata/block-copy.h).
 *
 * A call (block_copy_run or block_copy_range) scans the bitmap and turns
 * each dirty run into a task: its bits are cleared and the task is put on
 * the list of tasks in flight before anything is read, so a second call
 * never takes the same range, and a write that marks the range again
 * meanwhile makes it dirty again for a later pass.  The call classifies
 * the task and shrinks it to what classify answered for (the rest is
 * marked again); skips end there, copies and zero writes run in a
 * coroutine of their own, many at once.  A task that fails marks its
 * range again.
 *
 * Two kinds of calls share the bitmap but not the limits.  The
 * background (block_copy_run) has max_workers tasks in flight and
 * max_memory bytes of buffers at most (a data task waits for its buffer
 * after it is classified, zero and skip tasks need none).  A range call
 * (block_copy_range: a guest write waits for it) is urgent: its tasks
 * have limits of their own (BLOCK_COPY_URGENT_WORKERS tasks,
 * urgent_max_memory bytes), so they never queue behind background chunks
 * for a worker or a buffer, and they are never rate limited.
 *
 * And the background makes way for them (BLOCK_COPY_POLITE_*: a few
 * tasks, fewer writes, for a while after each range call).  An urgent
 * write queues behind every background write submitted before it (qcow2
 * serialises allocating writes under its lock, the kernel buffered
 * writes to one file), and a range call that overlaps a background chunk
 * waits for all of it: with 32 chunks in flight that was tens of
 * megabytes of writes ahead of a 64 KiB copy.  Writes that are
 * serialised anyway lose little by waiting their turn in the engine.
 *
 * A job's background data tasks run their copy offload and write-behind
 * calls at idle class (strata/pool-class.h), and so do the file writes a
 * task's frame opens to it (pool_background_writes_begin; a stream's
 * copy-on-read writes did, until measured to buy nothing: copy-on-read.c):
 * the guest's loop thread and
 * the kernel threads that write for it get a CPU at once, where a copy
 * thread at normal class kept it for its slice (docs/performance.md,
 * "Intermediate commit, guest p99").  Never for urgent tasks, and never
 * while a guest waits for a background task: a range call or a wait_range
 * that finds one in its way promotes it (its worker goes back to normal
 * class), and for the next BLOCK_COPY_POLITE_CHUNKS background tasks
 * after a range or wait_range call every task in flight is promoted and
 * new ones start at normal class, since the guest's copies and writes go
 * to the same target file (its inode lock, qcow2's cluster claims) where
 * an idle copy could hold them up.  A job that stops (pause, drain,
 * cancel, error) promotes what it waits for too.  Offline front ends
 * (no job) keep normal class throughout.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-copy.h"
#include "strata/block-driver.h"
#include "strata/block-ops.h"
#include "strata/copy-range.h"
#include "strata/job.h"
#include "strata/pool-class.h"
#include "strata/units.h"
#include "strata/writeback.h"

typedef struct BlockCopyCall BlockCopyCall;

typedef struct BlockCopyTask {
    int64_t offset, bytes;
    BlockCopyKind kind;
    BlockCopyCall *call;
    CoQueue waiters;            /* wait_range and range callers */
    bool idle;                  /* bg is open: its pool calls may run idle */
    PoolBackground bg;
} BlockCopyTask;

/* One block_copy_run or block_copy_range: its own tasks and result. */
struct BlockCopyCall {
    BlockCopyState *s;
    Job *job;
    bool urgent;                /* block_copy_range: a guest waits */
    int in_flight;
    int ret;
    bool error_is_read;
    CoQueue done;               /* one of this call's tasks finished */
};

struct BlockCopyState {
    BlockChild *source, *target;
    int64_t len;
    DirtyBitmap *bitmap;
    bool own_bitmap;

    int64_t granularity, max_chunk;
    int64_t chunk;              /* current chunk size: grows on success */
    uint64_t max_memory, memory;            /* background buffers */
    uint64_t urgent_max_memory, urgent_memory;
    GSList *buffers;            /* Buffer*: free ones kept for reuse */
    uint64_t cached;            /* their bytes */
    int max_workers, in_flight; /* in_flight: every task, both kinds */
    int urgent_in_flight;
    int bg_writing;             /* background writes to the target */
    int polite;                 /* background tasks left to be polite for */
    int not_idle;               /* background tasks left at normal class */
    int64_t bytes_in_flight;
    size_t buf_align;

    BlockCopyClassifyFunc *classify;
    void *classify_opaque;
    bool target_reads_zeroes, unmap, compress, use_copy_range;
    int copy_range_misses;      /* offload failures in a row */
    int offloading;             /* background copy_range calls running */
    uint64_t writes_seen;       /* others_writes() at the last look */
    int narrow;                 /* offloads left to run one at a time */
    CoQueue offload_wait;
    int read_flags;
    BlockCopyWriteFunc *write;
    void *write_opaque;
    BlockCopyReadFunc *read;
    void *read_opaque;
    BlockCopyProgressFunc *progress;
    void *progress_opaque;
    int64_t write_behind;       /* 0: off */
    int64_t unkicked;           /* data bytes written since the last kick */
    bool kicking;               /* a write-behind request runs */

    GQueue tasks;               /* BlockCopyTask*, in flight */
    /* The background may look again: one of its tasks ended, its memory
     * was freed, or the last urgent task ended. */
    CoQueue bg_wait;
    CoQueue urgent_wait;        /* an urgent task ended or freed memory */
    BlockCopyStats stats;
};

static void buffers_drop_one(BlockCopyState *s);

/* Offload failures in a row after which the engine stops trying. */
#define BLOCK_COPY_RANGE_MISSES 4
/*
 * Background copy_range calls at once.  Each blocks a pool thread in the
 * kernel's copy, and the kernel writes one file one at a time: 16 of
 * them spun on the target inode's lock (perf: rwsem_spin_on_owner) and
 * took the CPU from the loop thread that serves the guest.
 */
#define BLOCK_COPY_OFFLOAD_IN_FLIGHT 2

/*
 * While someone else writes to the disk the job copies from, the
 * background runs its offloads one at a time: after each offload that
 * finds new writes done to the source or a node above it (a guest
 * writing through an export of the source, or of an overlay over it as
 * in intermediate commit), the next BLOCK_COPY_GUEST_WINDOW offloads run
 * alone.  A guest's buffered write goes to a kernel worker thread of its
 * own (ext4 takes no non-blocking buffered write from io_uring) that must
 * find a CPU; with two copy_file_range threads busy on this 2-CPU machine
 * it waited 3-12 ms for one (ftrace, docs/performance.md "Intermediate
 * commit under guest writes").  A count, not a clock, as the copy-on-read
 * filter's COR_GUEST_WINDOW: 64 pieces of 1 MiB are tens of milliseconds
 * of copy, many guest writes at 1000 a second.
 */
#define BLOCK_COPY_GUEST_WINDOW 64

/* Range calls lately: the background keeps out of their way. */
static bool bg_polite(const BlockCopyState *s)
{
    return s->polite > 0 || s->urgent_in_flight > 0;
}

/* Whether a new task of call may run its pool calls at idle class. */
static bool task_may_idle(const BlockCopyState *s, const BlockCopyCall *call)
{
    return call->job && !call->urgent && s->not_idle == 0 &&
           s->urgent_in_flight == 0;
}

/* Someone waits for t (or may, behind a lock it holds): normal class. */
static void task_promote(BlockCopyTask *t)
{
    if (t->idle) {
        pool_background_promote(&t->bg);
    }
}

static void promote_all(BlockCopyState *s)
{
    for (GList *l = s->tasks.head; l; l = l->next) {
        task_promote(l->data);
    }
}

/* A guest copies or writes through the engine now: its background stays
 * at normal class for a while (the file comment says why). */
static void guest_in_the_way(BlockCopyState *s)
{
    s->not_idle = BLOCK_COPY_POLITE_CHUNKS;
    promote_all(s);
}

/*
 * Writes completed so far on bs and every node above it (not counting
 * skip, the engine's own target, and what is above it): they are someone
 * else's, the engine only reads there.
 */
static uint64_t writes_above(BlockNode *bs, BlockNode *skip, int depth)
{
    uint64_t n;

    if (bs == skip || depth > 16) {
        return 0;
    }
    n = bs->wr_ops;
    for (GList *l = bs->parents; l; l = l->next) {
        BlockChild *c = l->data;
        if (c->klass && c->klass->parent_is_node) {
            n += writes_above(c->opaque, skip, depth + 1);
        }
    }
    return n;
}

static uint64_t others_writes(const BlockCopyState *s)
{
    return writes_above(child_node(s->source),
                        s->target ? child_node(s->target) : NULL, 0);
}

/* Whether the next background offload runs alone (a guest writes). */
static bool offload_narrow(BlockCopyState *s)
{
    uint64_t w = others_writes(s);

    if (w != s->writes_seen) {
        s->writes_seen = w;
        s->narrow = BLOCK_COPY_GUEST_WINDOW;
        s->stats.narrowed++;
        return true;
    }
    if (s->narrow > 0) {
        s->narrow--;
        s->stats.narrowed++;
        return true;
    }
    return false;
}

/*
 * Whether base is in top's chain of filtered and backing children (QEMU's
 * bdrv_chain_contains).
 */
static bool chain_contains(BlockNode *top, BlockNode *base)
{
    while (top && top != base) {
        BlockNode *f = node_filtered_child(top);
        top = f ? f : node_backing(top);
    }
    return top != NULL;
}

/*
 * The flags of the engine's writes to the target.  Where the target's
 * chain holds the source (the pre-7.0 fleecing recipe: a qcow2 overlay
 * of the disk as backup target, exported and read while the guest
 * writes), a reader's read of the target may fall through to the source;
 * the copy must not let the guest's write change the source under such a
 * read in flight, so it waits for overlapping reads of the target and
 * later ones wait for it (REQ_SERIALISING, QEMU's block_copy_state_new).
 * Asked at every write rather than once: blockdev-reopen may change the
 * target's backing, and the walk is a few pointers against a chunk of I/O.
 */
static int target_flags(const BlockCopyState *s)
{
    return chain_contains(child_node(s->target), child_node(s->source))
           ? REQ_SERIALISING : 0;
}

/* ---- Set-up ---- */

static bool is_pow2(int64_t v)
{
    return v > 0 && !(v & (v - 1));
}

static int64_t cluster_size(BlockChild *c)
{
    BlockDriverInfo bdi = { 0 };
    if (c && node_get_info(child_node(c), &bdi) == 0 && bdi.cluster_size > 0) {
        return bdi.cluster_size;
    }
    return 0;
}

static size_t mem_align(BlockChild *c)
{
    BlockLimits bl;
    if (!c) {
        return 0;
    }
    node_get_limits(child_node(c), &bl);
    return MAX(bl.opt_mem_alignment, bl.min_mem_alignment);
}

BlockCopyState *block_copy_new(const BlockCopyOptions *opts, GError **errp)
{
    BlockCopyState *s;
    BlockNode *src;
    int64_t len, gran, max_chunk;
    uint64_t max_memory;
    int max_workers;

    if (!opts->source) {
        error_setg(errp, "block-copy: no source");
        return NULL;
    }
    src = child_node(opts->source);
    len = opts->length ? opts->length : node_getlength(src);
    /* Past the source's end only the caller knows what there is: its
     * read, its classify, and a bitmap it made long enough. */
    if (opts->length < 0 ||
        (opts->length > node_getlength(src) &&
         (!opts->read || !opts->classify || !opts->bitmap))) {
        error_setg(errp, "block-copy: length %" PRId64 " does not fit the "
                   "source", opts->length);
        return NULL;
    }
    if (len < 0) {
        error_setg_errno(errp, (int)-len, "Could not get the length of '%s'",
                         node_get_name(src));
        return NULL;
    }
    if (opts->bitmap) {
        gran = dirty_bitmap_granularity(opts->bitmap);
        len = MIN(len, dirty_bitmap_size(opts->bitmap));
    } else if (opts->granularity) {
        gran = opts->granularity;
    } else {
        gran = MAX((int64_t)(64 * KiB), cluster_size(opts->target));
    }
    if (!is_pow2(gran) || gran < 512 || gran > (int64_t)1 << 31) {
        error_setg(errp, "block-copy: granularity %" PRId64 " is not a power "
                   "of two between 512 and 2 GiB", gran);
        return NULL;
    }
    if (opts->max_memory && opts->max_memory < (uint64_t)gran) {
        error_setg(errp, "block-copy: memory budget %" PRIu64 " cannot hold "
                   "a chunk of %" PRId64, opts->max_memory, gran);
        return NULL;
    }
    /* The default chunk fits the caller's budget (mirror's buf-size). */
    max_chunk = opts->max_chunk ? opts->max_chunk
                : MAX(gran, MIN((int64_t)BLOCK_COPY_DEFAULT_MAX_CHUNK,
                                opts->max_memory ? (int64_t)opts->max_memory
                                                 : INT64_MAX));
    if (max_chunk < gran) {
        error_setg(errp, "block-copy: max chunk %" PRId64 " is smaller than "
                   "the granularity %" PRId64, max_chunk, gran);
        return NULL;
    }
    if (opts->compress && cluster_size(opts->target) > gran) {
        error_setg(errp, "block-copy: compressed writes need whole clusters: "
                   "granularity %" PRId64 " is smaller than the target's "
                   "cluster size %" PRId64, gran, cluster_size(opts->target));
        return NULL;
    }
    max_chunk = opts->compress ? gran : ROUND_DOWN(max_chunk, gran);
    max_memory = opts->max_memory ? opts->max_memory
                 : MAX((uint64_t)max_chunk, BLOCK_COPY_DEFAULT_MAX_MEMORY);
    if (max_memory < (uint64_t)max_chunk) {
        error_setg(errp, "block-copy: memory budget %" PRIu64 " cannot hold "
                   "a chunk of %" PRId64, max_memory, max_chunk);
        return NULL;
    }
    max_workers = opts->max_workers ? opts->max_workers
                                    : BLOCK_COPY_DEFAULT_MAX_WORKERS;
    if (max_workers < 0) {
        error_setg(errp, "block-copy: negative worker count");
        return NULL;
    }

    s = g_new0(BlockCopyState, 1);
    s->source = opts->source;
    s->target = opts->target;
    s->len = len;
    s->granularity = gran;
    s->max_chunk = max_chunk;
    s->chunk = opts->fixed_chunk ? max_chunk : gran;
    s->max_memory = max_memory;
    s->urgent_max_memory = MAX((uint64_t)max_chunk,
                               (uint64_t)BLOCK_COPY_URGENT_MEMORY);
    s->max_workers = max_workers;
    s->buf_align = MAX(MAX(mem_align(opts->source), mem_align(opts->target)),
                       4096);
    s->classify = opts->classify;
    s->classify_opaque = opts->classify_opaque;
    s->target_reads_zeroes = opts->target_reads_zeroes;
    s->unmap = opts->unmap;
    s->compress = opts->compress;
    /* Compressed writes and reads for their side effect only: no offload. */
    s->use_copy_range = opts->use_copy_range && opts->target &&
                        !opts->compress && !opts->write && !opts->read;
    s->write = opts->write;
    s->write_opaque = opts->write_opaque;
    s->read = opts->read;
    s->read_opaque = opts->read_opaque;
    s->read_flags = opts->read_flags;
    s->progress = opts->progress;
    s->progress_opaque = opts->progress_opaque;
    s->write_behind = opts->target && opts->write_behind > 0
                      ? opts->write_behind : 0;
    /* Writes before the job started are not a guest writing now. */
    s->writes_seen = others_writes(s);
    g_queue_init(&s->tasks);
    co_queue_init(&s->bg_wait);
    co_queue_init(&s->urgent_wait);
    co_queue_init(&s->offload_wait);

    if (opts->bitmap) {
        s->bitmap = opts->bitmap;
    } else {
        s->bitmap = node_create_dirty_bitmap(src, (uint32_t)gran, NULL, errp);
        if (!s->bitmap) {
            g_free(s);
            return NULL;
        }
        s->own_bitmap = true;
        /* Only the engine changes it: guest writes are not "left". */
        dirty_bitmap_set_enabled(s->bitmap, false);
        if (!opts->start_clean) {
            dirty_bitmap_set(s->bitmap, 0, len);
        }
    }
    return s;
}

void block_copy_free(BlockCopyState *s)
{
    if (!s) {
        return;
    }
    g_assert(s->in_flight == 0);
    while (s->buffers) {
        buffers_drop_one(s);
    }
    if (s->own_bitmap) {
        dirty_bitmap_release(s->bitmap);
    }
    g_free(s);
}

DirtyBitmap *block_copy_bitmap(BlockCopyState *s)
{
    return s->bitmap;
}

int64_t block_copy_granularity(const BlockCopyState *s)
{
    return s->granularity;
}

int64_t block_copy_remaining(const BlockCopyState *s)
{
    int64_t n = dirty_bitmap_count(s->bitmap);
    int64_t last = ROUND_DOWN(s->len - 1, s->granularity);
    /* The last granule may reach past the end: count what exists. */
    if (s->len > 0 && n > 0 && dirty_bitmap_get(s->bitmap, last)) {
        n -= last + s->granularity - s->len;
    }
    return n + s->bytes_in_flight;
}

void block_copy_set_dirty(BlockCopyState *s, int64_t offset, int64_t bytes)
{
    dirty_bitmap_set(s->bitmap, offset, bytes);
}

void block_copy_reset_dirty(BlockCopyState *s, int64_t offset, int64_t bytes)
{
    int64_t start = ROUND_UP(offset, s->granularity);
    int64_t end = offset + bytes;
    /* Rounded in: a granule partly outside the range stays marked, except
     * the last one of the disk, which the range may end with. */
    if (end < s->len) {
        end = ROUND_DOWN(end, s->granularity);
    }
    if (end > start) {
        dirty_bitmap_reset(s->bitmap, start, end - start);
    }
}

int block_copy_in_flight(const BlockCopyState *s)
{
    return s->in_flight;
}

void block_copy_get_stats(const BlockCopyState *s, BlockCopyStats *st)
{
    *st = s->stats;
}

/* ---- Tasks ---- */

static BlockCopyTask *find_overlap(BlockCopyState *s, int64_t offset,
                                   int64_t bytes)
{
    for (GList *l = s->tasks.head; l; l = l->next) {
        BlockCopyTask *t = l->data;
        if (t->offset < offset + bytes && offset < t->offset + t->bytes) {
            return t;
        }
    }
    return NULL;
}

/*
 * What the leading part of the task is, rounded to whole granules: a
 * zero or skip answer shorter than one granule cannot be acted on (the
 * bit covers the whole granule), so that granule is copied as data.
 */
static int coroutine_fn classify(BlockCopyState *s, BlockCopyTask *t,
                                 int64_t *pnum)
{
    int64_t n = 0;
    int kind;

    if (s->classify) {
        kind = s->classify(s->classify_opaque, t->offset, t->bytes, &n);
        if (kind < 0) {
            return kind;
        }
        g_assert(n > 0 && n <= t->bytes);
    } else {
        int64_t map;
        BlockNode *file;
        int ret = node_co_block_status_above(child_node(s->source), NULL,
                                             false, true, t->offset,
                                             t->bytes, &n, &map, &file,
                                             NULL);
        if (ret < 0 || n <= 0) {
            /* The read will say what is wrong, if anything is. */
            kind = BLOCK_COPY_DATA;
            n = t->bytes;
        } else {
            kind = (ret & BLOCK_ZERO) ? BLOCK_COPY_ZERO : BLOCK_COPY_DATA;
            n = MIN(n, t->bytes);
        }
    }
    if (n < t->bytes) {
        if (n >= s->granularity) {
            n = ROUND_DOWN(n, s->granularity);
        } else {
            n = MIN(s->granularity, t->bytes);
            kind = BLOCK_COPY_DATA;
        }
    }
    *pnum = n;
    return kind;
}

/* Give back the tail of a task that classify cut short. */
static void task_shrink(BlockCopyState *s, BlockCopyTask *t, int64_t bytes)
{
    if (bytes == t->bytes) {
        return;
    }
    dirty_bitmap_set(s->bitmap, t->offset + bytes, t->bytes - bytes);
    s->bytes_in_flight -= t->bytes - bytes;
    t->bytes = bytes;
    /* Waiters for the tail need not wait for this task any more. */
    co_queue_restart_all(&t->waiters);
}

/*
 * Buffers.  A fresh buffer costs a page fault per page on its first read
 * (a quarter of the engine's CPU time in a copy from the page cache), so
 * freed buffers are kept for the next chunk of the same size; sizes are
 * powers of two (capped at max_chunk) so that growing chunks find one.
 * What is kept counts against the background's budget with what the
 * background uses: kept and background buffers never hold more than
 * max_memory, urgent ones never more than urgent_max_memory.
 */
typedef struct Buffer {
    void *p;
    uint64_t size;
} Buffer;

static uint64_t buffer_size(const BlockCopyState *s, int64_t bytes)
{
    uint64_t n = 1;
    while (n < (uint64_t)bytes) {
        n <<= 1;
    }
    return MIN(n, (uint64_t)s->max_chunk);
}

static void buffers_drop_one(BlockCopyState *s)
{
    Buffer *b = s->buffers->data;
    s->buffers = g_slist_delete_link(s->buffers, s->buffers);
    s->cached -= b->size;
    free(b->p);
    g_free(b);
}

static void *coroutine_fn buffer_get(BlockCopyState *s, uint64_t size,
                                     bool urgent)
{
    uint64_t *used = urgent ? &s->urgent_memory : &s->memory;
    uint64_t max = urgent ? s->urgent_max_memory : s->max_memory;
    void *p = NULL;

    while (*used > 0 && *used + size > max) {
        co_queue_wait(urgent ? &s->urgent_wait : &s->bg_wait);
    }
    *used += size;
    s->stats.peak_memory = MAX(s->stats.peak_memory,
                               s->memory + s->urgent_memory);
    for (GSList *l = s->buffers; l; l = l->next) {
        Buffer *b = l->data;
        if (b->size == size) {
            p = b->p;
            s->cached -= size;
            s->buffers = g_slist_delete_link(s->buffers, l);
            g_free(b);
            return p;
        }
    }
    while (s->buffers && s->memory + s->cached > s->max_memory) {
        buffers_drop_one(s);
    }
    if (posix_memalign(&p, s->buf_align, size)) {
        *used -= size;
        co_queue_restart_all(urgent ? &s->urgent_wait : &s->bg_wait);
        return NULL;
    }
    return p;
}

static void buffer_put(BlockCopyState *s, void *p, uint64_t size,
                       bool urgent)
{
    if (urgent) {
        s->urgent_memory -= size;
    } else {
        s->memory -= size;
    }
    if (s->memory + s->cached + size <= s->max_memory) {
        Buffer *b = g_new(Buffer, 1);
        *b = (Buffer) { .p = p, .size = size };
        s->buffers = g_slist_prepend(s->buffers, b);
        s->cached += size;
    } else {
        free(p);
    }
    co_queue_restart_all(urgent ? &s->urgent_wait : &s->bg_wait);
}

/*
 * Count written data; past write_behind bytes, the background task that
 * crossed the mark asks for writeback of the target (in the thread pool:
 * the loop runs on).  The task stays in flight meanwhile, so the engine
 * is never freed under it; the other tasks go on, and only one request
 * runs.
 */
static void coroutine_fn write_behind(BlockCopyState *s, int64_t bytes,
                                      bool urgent)
{
    if (!s->write_behind) {
        return;
    }
    s->unkicked += bytes;
    /* A guest waits for an urgent task: the background asks instead. */
    if (urgent || s->kicking || s->unkicked < s->write_behind) {
        return;
    }
    s->unkicked = 0;
    s->kicking = true;
    s->stats.writeback_kicks++;
    node_co_start_writeback(child_node(s->target));
    s->kicking = false;
}

static int coroutine_fn copy_data(BlockCopyState *s, int64_t offset,
                                  int64_t bytes, bool urgent,
                                  bool *error_is_read)
{
    uint64_t size;
    void *buf;
    int ret;

    if (s->use_copy_range) {
        int max = !urgent && offload_narrow(s) ? 1
                  : BLOCK_COPY_OFFLOAD_IN_FLIGHT;

        while (!urgent && s->offloading >= max) {
            co_queue_wait(&s->offload_wait);
        }
        s->offloading += !urgent;
        s->stats.peak_offloading = MAX(s->stats.peak_offloading,
                                       s->offloading);
        ret = child_co_copy_range(s->source, offset, s->target, offset, bytes,
                                  s->read_flags, target_flags(s));
        s->offloading -= !urgent;
        co_queue_restart_all(&s->offload_wait);
        if (ret == 0) {
            s->stats.bytes_offloaded += bytes;
            s->copy_range_misses = 0;
            /* The kernel's copy fills the target's page cache as much. */
            write_behind(s, bytes, urgent);
            return 0;
        }
        /*
         * Whatever failed (cannot offload, or an I/O error that the
         * read/write below will pin on one side), this chunk is read and
         * written.  A pair of files that cannot offload one chunk cannot
         * offload the next; but a format can refuse one chunk for what it
         * holds (qcow2: a compressed or zero cluster in it, a run that
         * needs copy-on-write) and take the next: give up only after a
         * few refusals in a row.
         */
        if (++s->copy_range_misses >= BLOCK_COPY_RANGE_MISSES) {
            s->use_copy_range = false;
        }
    }
    size = buffer_size(s, bytes);
    buf = buffer_get(s, size, urgent);
    if (!buf) {
        *error_is_read = true;
        return -ENOMEM;
    }
    ret = s->read ? s->read(s->read_opaque, offset, bytes, buf)
          : child_co_pread(s->source, offset, bytes, buf, s->read_flags);
    if (ret < 0) {
        *error_is_read = true;
        goto out;
    }
    s->stats.bytes_read += bytes;
    if (s->target) {
        /* Chunks read before the range calls came write a few at a time. */
        while (!urgent && bg_polite(s) &&
               s->bg_writing >= BLOCK_COPY_POLITE_WRITES) {
            co_queue_wait(&s->bg_wait);
        }
        s->bg_writing += !urgent;
        ret = s->write ? s->write(s->write_opaque, offset, bytes, buf)
              : child_co_pwrite(s->target, offset, bytes, buf,
                                (s->compress ? REQ_WRITE_COMPRESSED : 0) |
                                target_flags(s));
        s->bg_writing -= !urgent;
        if (ret < 0) {
            *error_is_read = false;
            goto out;
        }
        s->stats.bytes_written += bytes;
    }
out:
    buffer_put(s, buf, size, urgent);
    if (ret >= 0 && s->target) {
        write_behind(s, bytes, urgent); /* the buffer is free for others */
    }
    return ret < 0 ? ret : 0;
}

/*
 * The end of a task, whatever it was: a failed one marks its range
 * again and gives the call its error (the first one counts); a done one
 * is reported.  Then whoever waits for the task, a slot or the call
 * looks again.
 */
static void task_end(BlockCopyState *s, BlockCopyTask *t, int ret,
                     bool is_read)
{
    BlockCopyCall *call = t->call;

    s->stats.chunks++;
    if (ret < 0) {
        dirty_bitmap_set(s->bitmap, t->offset, t->bytes);
        if (call->ret == 0) {
            call->ret = ret;
            call->error_is_read = is_read;
        }
        s->chunk = s->granularity;
    } else {
        if (t->kind == BLOCK_COPY_DATA) {
            s->chunk = MIN(s->chunk * 2, s->max_chunk);
        }
        if (s->progress) {
            s->progress(s->progress_opaque, t->offset, t->bytes, t->kind);
        }
    }
    g_queue_remove(&s->tasks, t);
    s->bytes_in_flight -= t->bytes;
    s->in_flight--;
    co_queue_restart_all(&t->waiters);
    if (call->urgent) {
        s->urgent_in_flight--;
        co_queue_restart_all(&s->urgent_wait);
        if (s->urgent_in_flight == 0) {
            co_queue_restart_all(&s->bg_wait);
        }
    } else {
        s->polite = MAX(s->polite - 1, 0);
        s->not_idle = MAX(s->not_idle - 1, 0);
        co_queue_restart_all(&s->bg_wait);
    }
    call->in_flight--;
    co_queue_restart_all(&call->done);
    g_free(t);
}

/* The I/O of a classified task, in a coroutine of its own. */
static void coroutine_fn task_entry(void *opaque)
{
    BlockCopyTask *t = opaque;
    BlockCopyState *s = t->call->s;
    bool is_read = false;
    int ret;

    if (t->kind == BLOCK_COPY_DATA) {
        bool idle = task_may_idle(s, t->call);
        if (idle) {
            pool_background_begin(&t->bg);
            t->idle = true;
        }
        ret = copy_data(s, t->offset, t->bytes, t->call->urgent, &is_read);
        if (idle) {
            t->idle = false;
            pool_background_end(&t->bg);
        }
    } else {
        ret = child_co_pwrite_zeroes(s->target, t->offset, t->bytes,
                                     (s->unmap ? REQ_MAY_UNMAP : 0) |
                                     target_flags(s));
        if (ret >= 0) {
            s->stats.bytes_zeroed += t->bytes;
        }
    }
    task_end(s, t, ret, is_read);
}

/*
 * Take the dirty run at offset (up to end and one chunk), classify it
 * here, as QEMU does (so that the rate limit is charged with what is
 * really copied, before it is), and start its I/O; ranges that need no
 * I/O end here.  Returns the length taken (after classify).
 */
static int64_t coroutine_fn take_and_start(BlockCopyState *s,
                                           BlockCopyCall *call,
                                           int64_t offset, int64_t end)
{
    /*
     * Classify a long run at once: zeroes and skips need no buffer and
     * are done in one piece (a sparse disk in 64 MiB steps, not chunk by
     * chunk); data is cut to the current chunk afterwards.
     */
    int64_t n = MIN(MIN(64 * s->max_chunk, (int64_t)GiB), end - offset);
    int64_t clean = dirty_bitmap_next_clean(s->bitmap, offset, n);
    int64_t taken;
    BlockCopyTask *t;
    int kind;

    if (clean > offset) {
        n = clean - offset;
    }
    /* Whole granules: the bits cover them (the disk's end clips). */
    n = MIN(ROUND_UP(offset + n, s->granularity), s->len) - offset;
    dirty_bitmap_reset(s->bitmap, offset, n);

    t = g_new0(BlockCopyTask, 1);
    t->offset = offset;
    t->bytes = n;
    t->call = call;
    co_queue_init(&t->waiters);
    g_queue_push_tail(&s->tasks, t);
    s->bytes_in_flight += n;
    s->in_flight++;
    s->stats.peak_in_flight = MAX(s->stats.peak_in_flight, s->in_flight);
    s->urgent_in_flight += call->urgent;
    call->in_flight++;

    taken = n;
    kind = classify(s, t, &n);
    if (kind < 0) {
        task_end(s, t, kind, true);
        return taken;
    }
    if (kind == BLOCK_COPY_DATA && n > s->chunk) {
        n = s->chunk;
    }
    /*
     * Under a speed limit zeroes written are charged a largest chunk at
     * a time, as QEMU's tasks are never longer (its copy size, 1 MiB): a
     * zero disk at 1 MiB/s takes a second per MiB there, not one charge
     * for all of it (QEMU's 264).
     */
    if (kind == BLOCK_COPY_ZERO && n > s->max_chunk && s->target &&
        !s->target_reads_zeroes && call->job && call->job->speed) {
        n = s->max_chunk;
    }
    task_shrink(s, t, n);
    t->kind = kind;
    if (kind != BLOCK_COPY_DATA && kind != BLOCK_COPY_ZERO &&
        kind != BLOCK_COPY_SKIP) {
        task_end(s, t, -EINVAL, true);  /* a classify answered nonsense */
        return n;
    }
    if (kind == BLOCK_COPY_SKIP ||
        (kind == BLOCK_COPY_ZERO && (!s->target || s->target_reads_zeroes))) {
        /* Nothing to write. */
        s->stats.bytes_skipped += n;
        task_end(s, t, 0, false);
        return n;
    }
    if (call->job) {
        job_ratelimit_processed(call->job, n);
    }
    co_enter(co_create(task_entry, t));
    return n;
}

static void coroutine_fn call_wait_idle(BlockCopyCall *call)
{
    while (call->in_flight > 0) {
        co_queue_wait(&call->done);
    }
}

/*
 * Before the job may stop (pause, drain, rate-limit sleep), this call's
 * chunks finish: a paused job has nothing in flight.  Returns whether it
 * stopped (the caller looks at everything again).
 */
static bool coroutine_fn job_check(BlockCopyCall *call)
{
    Job *job = call->job;

    if (job->pause_count > 0) {
        /* A drain (and the guest requests it holds) waits for these. */
        promote_all(call->s);
        call_wait_idle(call);
        job_pause_point(job);
        return true;
    }
    if (job->speed && ratelimit_delay(&job->limit, 0) > 0) {
        call_wait_idle(call);
        job_ratelimit_sleep(job);
        return true;
    }
    return false;
}

/*
 * Whether the call must wait before it takes a task, and where.  An
 * urgent call counts only urgent tasks.  The background has fewer
 * tasks while it is polite (it slows down, it never stops: guest writes
 * cannot starve it), and waits for the buffer of a chunk of the current
 * size: a task taken stands in the way of every range call that overlaps
 * it, so it is taken only when its I/O can start.
 */
static CoQueue *must_wait(BlockCopyState *s, const BlockCopyCall *call)
{
    if (call->urgent) {
        return s->urgent_in_flight >= BLOCK_COPY_URGENT_WORKERS
               ? &s->urgent_wait : NULL;
    }
    int bg = s->in_flight - s->urgent_in_flight;
    if (bg >= (bg_polite(s) ? MIN(BLOCK_COPY_POLITE_TASKS, s->max_workers)
                            : s->max_workers) ||
        (s->memory > 0 &&
         s->memory + buffer_size(s, s->chunk) > s->max_memory)) {
        return &s->bg_wait;
    }
    return NULL;
}

/*
 * Copy what is marked in [offset, end) until nothing is.  wait_others:
 * also wait for other calls' tasks overlapping the range (their failure
 * marks bits again, which this call then copies itself).
 */
static int coroutine_fn copy_marked(BlockCopyState *s, Job *job,
                                    int64_t offset, int64_t end,
                                    bool wait_others, bool *error_is_read)
{
    BlockCopyCall call = { .s = s, .job = job, .urgent = wait_others };
    int64_t cursor = offset;

    co_queue_init(&call.done);
    while (call.ret == 0) {
        int64_t d;
        BlockCopyTask *other;

        if (job && job_is_cancelled(job)) {
            call.ret = -ECANCELED;
            break;
        }
        if (job && job_check(&call)) {
            continue;
        }
        d = cursor < end ? dirty_bitmap_next_dirty(s->bitmap, cursor,
                                                  end - cursor) : -1;
        if (d < 0 && cursor > offset) {
            /* Marked again behind the cursor (a recording bitmap). */
            d = dirty_bitmap_next_dirty(s->bitmap, offset, end - offset);
        }
        if (d >= 0) {
            CoQueue *q = must_wait(s, &call);
            if (q) {
                co_queue_wait(q);
                continue;
            }
            cursor = d + take_and_start(s, &call, d, end);
            continue;
        }
        cursor = offset;
        if (call.in_flight > 0) {
            co_queue_wait(&call.done);
            continue;
        }
        other = wait_others ? find_overlap(s, offset, end - offset) : NULL;
        if (!other) {
            break;
        }
        task_promote(other);
        co_queue_wait(&other->waiters);
    }
    if (call.ret < 0) {
        /* Cancelled or failed: whoever stops the job waits for the rest. */
        promote_all(s);
    }
    call_wait_idle(&call);
    if (call.ret < 0 && error_is_read) {
        *error_is_read = call.error_is_read;
    }
    return call.ret;
}

int coroutine_fn block_copy_run(BlockCopyState *s, Job *job,
                                bool *error_is_read)
{
    return copy_marked(s, job, 0, s->len, false, error_is_read);
}

int coroutine_fn block_copy_range(BlockCopyState *s, int64_t offset,
                                  int64_t bytes, bool *error_is_read)
{
    int64_t start = ROUND_DOWN(MAX(offset, 0), s->granularity);
    int64_t end = MIN(offset + bytes, s->len);

    if (bytes <= 0 || start >= end) {
        return 0;
    }
    s->polite = BLOCK_COPY_POLITE_CHUNKS;
    guest_in_the_way(s);
    return copy_marked(s, NULL, start, end, true, error_is_read);
}

void coroutine_fn block_copy_wait_range(BlockCopyState *s, int64_t offset,
                                        int64_t bytes)
{
    BlockCopyTask *t;

    /* The guest's write to the target follows: it shares the target's
     * file with the background copies. */
    guest_in_the_way(s);
    while ((t = find_overlap(s, offset, bytes))) {
        co_queue_wait(&t->waiters);
    }
}

/*
 * The job wants to pause (jobs/job.c job_pause(): a drain, job-pause):
 * it parks only once its tasks end, and job_check() promotes them only
 * when the job's coroutine next runs, i.e. once one of them has ended,
 * which at idle class on a busy machine may take until the thread
 * pool's watchdog.  A drain promotes the requests in flight on its own
 * nodes, but not the calls the job has on other nodes (the target of a
 * drained source, write-behind): only the engine knows those.
 */
void block_copy_promote(BlockCopyState *s)
{
    promote_all(s);
}
