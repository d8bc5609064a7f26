/*
 * The copy of strata-img convert, on the copy engine (strata/block-copy.h):
 * one implementation, and one progress report, with the jobs.
 *
 * The sources are one long disk.  The engine walks it in ascending order
 * and asks classify (iteration_sectors: qemu-img's steps) what each run
 * holds: data to copy, zeroes, or (when the target has a backing file) a
 * range to leave unallocated.  It reads data chunks of qemu-img's request
 * size through convert's read call-back and hands them to convert_write(),
 * which scans them for zero runs of at least min_sparse sectors (zero
 * writes, or nothing on a target that starts out zeroed), compresses
 * (-c) and rate-limits (-r) as qemu-img does.  Writes go out in disk
 * order unless -W, where the target's layout depends on it, with -m
 * chunks read ahead (wait_turn).
 *
 * Why a read call-back and not a read-only "concat" node under the
 * engine: --salvage must retry a failed read sector by sector and turn
 * what stays unreadable into zeroes with qemu-img's warnings, which no
 * node below the engine can do without the tool's policy in it; and the
 * call-back also pads a source whose length is not a sector multiple.
 * With a call-back, the concatenation is twenty lines of this file
 * (select_part) instead of a driver, and the engine gains only a read
 * hook mirroring its write one.  The engine's bitmap must cover the
 * whole disk: it is an anonymous one on the target node, which convert
 * made (or checked to be) at least that long.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/loop.h"
#include "convert.h"

/* ---- Block status of the source, down to (excluding) base ---- */

/* Also called outside coroutines (counting for the progress meter). */
static int status_above(BlockNode *bs, BlockNode *base, int64_t offset,
                        int64_t bytes, int64_t *pnum)
{
    return node_block_status_above(bs, base, false, true, offset, bytes,
                                   pnum, NULL, NULL, NULL);
}

/* ---- Stepping through the sources ---- */

static void select_part(ConvertState *s, int64_t sector_num, int *src_cur,
                        int64_t *src_cur_offset)
{
    int64_t off = 0;
    int i;

    for (i = 0; i < s->src_num - 1; i++) {
        if (sector_num < off + s->src_sectors[i]) {
            break;
        }
        off += s->src_sectors[i];
    }
    *src_cur = i;
    *src_cur_offset = off;
}

#define REQUEST_MAX_SECTORS (INT32_MAX >> 9)

/*
 * Classify the run starting at sector_num and return its length in
 * sectors (or -errno after reporting the error).  Called in ascending
 * order (the engine's classify, count_allocated).
 */
static int64_t iteration_sectors(ConvertState *s, int64_t sector_num)
{
    int64_t src_cur_offset, n;
    bool post_backing_zero = false;
    int src_cur;

    select_part(s, sector_num, &src_cur, &src_cur_offset);
    n = MIN(s->total_sectors - sector_num, REQUEST_MAX_SECTORS);

    if (s->target_backing_sectors >= 0) {
        if (sector_num >= s->target_backing_sectors) {
            post_backing_zero = true;
        } else if (sector_num + n > s->target_backing_sectors) {
            /* Zeroes past the backing file's end need no writing. */
            n = s->target_backing_sectors - sector_num;
        }
    }

    if (s->sector_next_status <= sector_num) {
        BlockNode *src_bs = blk_node(s->src[src_cur]);
        int64_t offset = (sector_num - src_cur_offset) * CONVERT_SECTOR;
        int64_t src_len = s->src_sectors[src_cur] * CONVERT_SECTOR;
        BlockNode *base = NULL;
        int64_t count, tail;
        int ret;

        if (s->target_has_backing) {
            base = node_backing(node_skip_filters(src_bs));
        }
        for (;;) {
            int64_t len = node_getlength(src_bs);

            count = MIN(n * CONVERT_SECTOR, src_len - offset);
            if (len >= 0) {
                count = MIN(count, len - offset);
            }
            ret = status_above(src_bs, base, offset, count, &count);
            if (ret >= 0 && count <= 0) {
                ret = -EIO;
            }
            if (ret >= 0) {
                break;
            }
            if (!s->salvage) {
                tool_error("error while reading block status at offset %"
                           PRId64 ": %s", offset, g_strerror(-ret));
                return ret;
            }
            if (n == 1) {
                if (!s->quiet) {
                    tool_warn("error while reading block status at offset %"
                              PRId64 ": %s", offset, g_strerror(-ret));
                }
                /* Try to read the data then. */
                ret = BLOCK_DATA;
                count = CONVERT_SECTOR;
                break;
            }
            n = DIV_ROUND_UP(n, 4);
        }
        n = DIV_ROUND_UP(count, CONVERT_SECTOR);

        /* Keep the next status query aligned for the source. */
        tail = (sector_num - src_cur_offset + n) % s->src_alignment[src_cur];
        if (n > tail) {
            n -= tail;
        }

        if (ret & BLOCK_ZERO) {
            s->status = post_backing_zero ? CONVERT_BACKING : CONVERT_ZERO;
        } else if (ret & BLOCK_DATA) {
            s->status = CONVERT_DATA;
        } else {
            s->status = s->target_has_backing ? CONVERT_BACKING
                                              : CONVERT_DATA;
        }
        s->sector_next_status = sector_num + n;
    }

    n = MIN(n, s->sector_next_status - sector_num);
    if (s->status == CONVERT_DATA) {
        n = MIN(n, s->buf_sectors);
    }

    /* Compressed clusters are written whole. */
    if (s->compressed) {
        if (n < s->cluster_sectors) {
            n = MIN(s->cluster_sectors, s->total_sectors - sector_num);
            s->status = CONVERT_DATA;
        } else {
            n = n / s->cluster_sectors * s->cluster_sectors;
        }
    }
    return n;
}

/* ---- Zero detection in data buffers ---- */

/*
 * Whether the first sector of buf holds data; *pnum gets the number of
 * sectors from there on in the same state, with the end of the run moved
 * to an alignment boundary where that saves a read-modify-write.
 */
static bool sectors_allocated(const uint8_t *buf, int64_t n, int64_t *pnum,
                              int64_t sector_num, int alignment)
{
    bool zero;
    int64_t i, tail;

    if (n <= 0) {
        *pnum = 0;
        return false;
    }
    zero = buffer_is_zero(buf, CONVERT_SECTOR);
    for (i = 1; i < n; i++) {
        if (zero != (bool)buffer_is_zero(buf + i * CONVERT_SECTOR,
                                         CONVERT_SECTOR)) {
            break;
        }
    }
    if (i == n) {
        *pnum = i;
        return !zero;
    }
    tail = (sector_num + i) & (alignment - 1);
    if (tail) {
        if (zero && i <= tail) {
            /* The data that follows rewrites this short zero run anyway. */
            zero = false;
        }
        if (!zero) {
            i = MIN(i + alignment - tail, n);
        } else {
            i -= tail;
        }
    }
    *pnum = i;
    return !zero;
}

/*
 * Like sectors_allocated(), but a data run swallows zero runs shorter than
 * min sectors, so that small holes do not split the write.
 */
static bool sectors_allocated_min(const uint8_t *buf, int64_t n,
                                  int64_t *pnum, int64_t min,
                                  int64_t sector_num, int alignment)
{
    int64_t used, checked;

    min = MIN(min, n);
    if (!sectors_allocated(buf, n, pnum, sector_num, alignment)) {
        return false;
    }
    used = checked = *pnum;
    buf += *pnum * CONVERT_SECTOR;
    n -= *pnum;
    sector_num += *pnum;
    while (n > 0) {
        bool data = sectors_allocated(buf, n, pnum, sector_num, alignment);

        buf += *pnum * CONVERT_SECTOR;
        n -= *pnum;
        sector_num += *pnum;
        checked += *pnum;
        if (data) {
            used = checked;
        } else if (*pnum >= min) {
            break;
        }
    }
    *pnum = used;
    return true;
}

/* ---- Reading and writing ---- */

static int coroutine_fn read_at(BlockBackend *blk, int64_t offset,
                                int64_t bytes, uint8_t *buf)
{
    int64_t len = blk_getlength(blk);
    IOVec qiov;
    int ret;

    if (len < 0) {
        return (int)len;
    }
    /* A source whose size is not a sector multiple reads as zero-padded. */
    if (offset + bytes > len) {
        int64_t valid = MAX(0, len - offset);
        memset(buf + valid, 0, bytes - valid);
        bytes = valid;
    }
    if (bytes == 0) {
        return 0;
    }
    iovec_init_buf(&qiov, buf, bytes);
    ret = blk_co_preadv(blk, offset, bytes, &qiov, 0);
    iovec_destroy(&qiov);
    return ret < 0 ? ret : 0;
}

static int coroutine_fn convert_read(ConvertState *s, int64_t sector_num,
                                     int64_t nb_sectors, uint8_t *buf)
{
    int64_t single_read_until = 0;

    while (nb_sectors > 0) {
        int64_t src_cur_offset, n, offset;
        int src_cur, ret;

        /* A compressed cluster may straddle two sources. */
        select_part(s, sector_num, &src_cur, &src_cur_offset);
        offset = (sector_num - src_cur_offset) * CONVERT_SECTOR;
        n = MIN(nb_sectors,
                s->src_sectors[src_cur] - (sector_num - src_cur_offset));
        if (single_read_until > offset) {
            n = 1;
        }
        ret = read_at(s->src[src_cur], offset, n * CONVERT_SECTOR, buf);
        if (ret < 0) {
            if (!s->salvage) {
                return ret;
            }
            if (n > 1) {
                /* Retry this range one sector at a time. */
                single_read_until = offset + n * CONVERT_SECTOR;
                continue;
            }
            if (!s->quiet) {
                tool_warn("error while reading offset %" PRId64 ": %s",
                          offset, g_strerror(-ret));
            }
            memset(buf, 0, CONVERT_SECTOR);
        }
        sector_num += n;
        nb_sectors -= n;
        if (buf) {              /* zero ranges come without a buffer */
            buf += n * CONVERT_SECTOR;
        }
    }
    return 0;
}

/* -r: hold each write back until the average stays under the limit. */
static void coroutine_fn rate_limit_wait(ConvertState *s, int64_t bytes)
{
    int64_t due;

    if (!s->rate_limit) {
        return;
    }
    if (!s->rate_start_ns) {
        s->rate_start_ns = clock_ns();
    }
    due = s->rate_start_ns +
          (int64_t)((double)s->rate_bytes * 1e9 / (double)s->rate_limit);
    s->rate_bytes += bytes;
    if (due > clock_ns()) {
        co_sleep_ns(due - clock_ns());
    }
}

static int coroutine_fn write_data(ConvertState *s, int64_t sector_num,
                                   int64_t n, uint8_t *buf)
{
    IOVec qiov;
    int ret;

    rate_limit_wait(s, n * CONVERT_SECTOR);
    iovec_init_buf(&qiov, buf, n * CONVERT_SECTOR);
    ret = blk_co_pwritev(s->target, sector_num * CONVERT_SECTOR,
                         n * CONVERT_SECTOR, &qiov,
                         s->compressed ? REQ_WRITE_COMPRESSED : 0);
    iovec_destroy(&qiov);
    return ret < 0 ? ret : 0;
}

static int coroutine_fn convert_write(ConvertState *s, int64_t sector_num,
                                      int64_t nb_sectors, uint8_t *buf,
                                      ConvertStatus status)
{
    while (nb_sectors > 0) {
        int64_t n = nb_sectors;
        int ret;

        switch (status) {
        case CONVERT_BACKING:
            /* Unallocated in the source: let the target's backing show. */
            break;
        case CONVERT_DATA:
            /*
             * Write what is data (all of it with -S 0, and with -C, where
             * qemu-img offloads the copy without looking at the data).  A
             * compressed cluster goes out whole unless it is entirely zero.
             */
            if (!s->min_sparse || s->copy_range ||
                (!s->compressed &&
                 sectors_allocated_min(buf, n, &n, s->min_sparse, sector_num,
                                       s->alignment)) ||
                (s->compressed &&
                 !buffer_is_zero(buf, n * CONVERT_SECTOR))) {
                ret = write_data(s, sector_num, n, buf);
                if (ret < 0) {
                    return ret;
                }
                break;
            }
            /* Zero data: treated as a zero range. */
            __attribute__((fallthrough));
        case CONVERT_ZERO:
            if (s->has_zero_init) {
                break;
            }
            ret = blk_co_pwrite_zeroes(s->target, sector_num * CONVERT_SECTOR,
                                       n * CONVERT_SECTOR, REQ_MAY_UNMAP);
            if (ret < 0) {
                return ret;
            }
            break;
        }
        sector_num += n;
        nb_sectors -= n;
        if (buf) {              /* zero ranges come without a buffer */
            buf += n * CONVERT_SECTOR;
        }
    }
    return 0;
}

/* Total of the sectors that will be written, for the progress meter. */
static int count_allocated(ConvertState *s)
{
    int64_t sector_num = 0;

    while (sector_num < s->total_sectors) {
        int64_t n = iteration_sectors(s, sector_num);

        if (n < 0) {
            return (int)n;
        }
        if (s->status == CONVERT_DATA ||
            (!s->min_sparse && s->status == CONVERT_ZERO)) {
            s->allocated_sectors += n;
        }
        sector_num += n;
    }
    return 0;
}

/* ---- The copy engine's path (strata/block-copy.h) ---- */

/*
 * In-order writes (qemu-img's default, kept where the target's layout
 * follows the order of its writes): chunks are read ahead, many at once,
 * and each waits here until everything before it is written.  Every read
 * and write goes through convert's call-backs, so a chunk that fails is
 * seen here (engine_reported) and wakes the waiters, which give up:
 * none waits for a turn that will not come.  (The engine could fail a
 * chunk before its read only for want of a buffer, posix_memalign
 * failing: that would hang here.)  false: give up.
 */
static bool coroutine_fn wait_turn(ConvertState *s, int64_t sector_num)
{
    while (s->ordered && s->wr_offs < sector_num && !s->engine_reported) {
        co_queue_wait(&s->wr_queue);
    }
    return !s->engine_reported;
}

static void turn_done(ConvertState *s, int64_t end)
{
    if (s->ordered) {
        s->wr_offs = MAX(s->wr_offs, end);
        co_queue_restart_all(&s->wr_queue);
    }
}

/* A chunk failed and said so: whoever waits for a turn gives up. */
static void convert_failed(ConvertState *s)
{
    s->engine_reported = true;
    co_queue_restart_all(&s->wr_queue);
}

/*
 * The engine asks in ascending order, one range at a time (it classifies
 * before it starts a chunk), which is the order iteration_sectors()
 * caches its block status for: the same runs as qemu-img's steps.
 */
static int coroutine_fn engine_classify(void *opaque, int64_t offset,
                                        int64_t bytes, int64_t *pnum)
{
    ConvertState *s = opaque;
    int64_t sector_num = offset / CONVERT_SECTOR;
    int64_t n = iteration_sectors(s, sector_num);

    if (n < 0) {
        convert_failed(s);              /* iteration_sectors() told */
        return (int)n;
    }
    *pnum = MIN(n * CONVERT_SECTOR, bytes);
    if (s->status == CONVERT_DATA || (s->status == CONVERT_ZERO &&
                                      !s->min_sparse)) {
        /*
         * -S 0: zeroes are written as data (they read as zeroes).  One
         * request's worth: the chunk the engine starts now, which
         * qemu-img's meter counts as it starts it (not as it ends: with
         * many in flight they end out of order, and the meter's steps
         * would differ).
         */
        n = MIN(n, s->buf_sectors);
        *pnum = MIN(n * CONVERT_SECTOR, bytes);
        if (s->allocated_sectors) {
            s->allocated_done += DIV_ROUND_UP(*pnum, CONVERT_SECTOR);
            img_progress_set_bytes(s->progress,
                                   (uint64_t)s->allocated_done *
                                   CONVERT_SECTOR,
                                   (uint64_t)s->allocated_sectors *
                                   CONVERT_SECTOR);
            img_progress_print(s->progress, 100.0 * s->allocated_done /
                               s->allocated_sectors, 0);
        }
        return BLOCK_COPY_DATA;
    }
    /*
     * A zero run is written here, whole, as qemu-img writes it: the
     * engine would cut it at its chunks, and a zero write that ends in
     * the middle of a cluster allocates that cluster on a target with a
     * backing file.  The engine then skips the run.  In order: after
     * the chunks before it are written (the engine waits meanwhile:
     * it classifies before it starts the next chunk).
     */
    if (!wait_turn(s, sector_num)) {
        return -ECANCELED;
    }
    if (s->status == CONVERT_ZERO && s->engine_zeroed <= sector_num) {
        int ret = convert_write(s, sector_num, n, NULL, CONVERT_ZERO);

        if (ret < 0) {
            tool_error("error while writing at byte %" PRId64 ": %s",
                       offset, g_strerror(-ret));
            convert_failed(s);
            return ret;
        }
        s->engine_zeroed = sector_num + n;
    }
    turn_done(s, sector_num + n);
    return BLOCK_COPY_SKIP;
}

/* A data chunk, from the source(s) it spans (--salvage: sector by sector
 * where a read fails). */
static int coroutine_fn engine_read(void *opaque, int64_t offset,
                                    int64_t bytes, void *buf)
{
    ConvertState *s = opaque;
    int ret;

    if (s->engine_reported) {
        return -ECANCELED;              /* another chunk failed first */
    }
    ret = convert_read(s, offset / CONVERT_SECTOR,
                       DIV_ROUND_UP(bytes, CONVERT_SECTOR), buf);
    if (ret < 0) {
        tool_error("error while reading at byte %" PRId64 ": %s", offset,
                   g_strerror(-ret));
        convert_failed(s);
    }
    return ret;
}

/* A data chunk as read: written as qemu-img writes a data step. */
static int coroutine_fn engine_write(void *opaque, int64_t offset,
                                     int64_t bytes, void *buf)
{
    ConvertState *s = opaque;
    int64_t sector_num = offset / CONVERT_SECTOR;
    int ret;

    if (!wait_turn(s, sector_num)) {
        return -ECANCELED;              /* another chunk failed first */
    }
    ret = convert_write(s, sector_num, DIV_ROUND_UP(bytes, CONVERT_SECTOR),
                        buf, CONVERT_DATA);
    if (ret < 0) {
        tool_error("error while writing at byte %" PRId64 ": %s", offset,
                   g_strerror(-ret));
        convert_failed(s);
        return ret;
    }
    turn_done(s, sector_num + DIV_ROUND_UP(bytes, CONVERT_SECTOR));
    return 0;
}

typedef struct EngineRun {
    BlockCopyState *bcs;
    bool done, error_is_read;
    int ret;
} EngineRun;

static void coroutine_fn engine_entry(void *opaque)
{
    EngineRun *r = opaque;

    r->ret = block_copy_run(r->bcs, NULL, &r->error_is_read);
    r->done = true;
}

int convert_do_copy(ConvertState *s)
{
    /*
     * -C: the engine offloads (or copies) data ranges whole, straight
     * from the one source; with -r (qemu-img then writes them through
     * its rate limit), --salvage or a disk the source alone does not
     * make, they are read and written by convert as without -C (whole:
     * convert_write() does not scan them).
     */
    bool offload = s->copy_range && !s->rate_limit && !s->salvage &&
                   s->src_num == 1 &&
                   blk_getlength(s->src[0]) == s->total_sectors *
                                               CONVERT_SECTOR;
    BlockCopyOptions o = {
        .source = blk_root(s->src[0]),
        .target = blk_root(s->target),
        /* Sectors: classify's answers are acted on exactly. */
        .granularity = CONVERT_SECTOR,
        .max_chunk = s->buf_sectors * CONVERT_SECTOR,
        /*
         * In order unless -W, as qemu-img: a qcow2 target allocates its
         * clusters in the order the writes come, and tests and users
         * compare the files.  A raw file target has no layout to keep.
         * Convert's call-backs keep the order (wait_turn) with -m
         * chunks in flight; the engine's own offload path cannot, so
         * it copies one chunk at a time there.
         */
        .max_workers = (offload && s->wr_in_order &&
                        s->target_has_allocation) ? 1 : s->num_coroutines,
        .fixed_chunk = true,
        .length = s->total_sectors * CONVERT_SECTOR,
        .read = offload ? NULL : engine_read,
        .read_opaque = s,
        .write = offload ? NULL : engine_write,
        .write_opaque = s,
        .classify = engine_classify,
        .classify_opaque = s,
        .use_copy_range = offload,
    };
    EngineRun r = { 0 };
    GError *err = NULL;
    int64_t at;
    int ret;

    if (s->compressed) {
        /* One cluster per request (convert_write() compresses it). */
        if (s->cluster_sectors <= 0 || s->cluster_sectors > s->buf_sectors) {
            tool_error("invalid cluster size");
            return -EINVAL;
        }
        s->buf_sectors = s->cluster_sectors;
        o.max_chunk = s->buf_sectors * CONVERT_SECTOR;
    }

    ret = count_allocated(s);
    if (ret < 0) {
        return ret;
    }

    /* What is left of the whole disk, which may be longer than any one
     * source: on the target, at least as long (convert.c). */
    o.bitmap = node_create_dirty_bitmap(blk_node(s->target), CONVERT_SECTOR,
                                        NULL, &err);
    if (!o.bitmap) {
        tool_error("%s", err->message);
        g_error_free(err);
        return -ENOMEM;
    }
    dirty_bitmap_set_enabled(o.bitmap, false);
    dirty_bitmap_set(o.bitmap, 0, o.length);

    o.max_memory = MAX((uint64_t)BLOCK_COPY_DEFAULT_MAX_MEMORY,
                       (uint64_t)o.max_chunk);
    r.bcs = block_copy_new(&o, &err);
    if (!r.bcs) {
        tool_error("%s", err->message);
        g_error_free(err);
        dirty_bitmap_release(o.bitmap);
        return -EINVAL;
    }
    s->sector_next_status = 0;
    s->engine_zeroed = 0;
    s->ordered = !offload && s->wr_in_order && s->target_has_allocation;
    s->wr_offs = 0;
    co_queue_init(&s->wr_queue);
    co_enter(co_create(engine_entry, &r));
    LOOP_WAIT_WHILE(!r.done);
    if (r.ret < 0 && !s->engine_reported) {
        /* A failed chunk is marked again: the first mark is where the
         * copy stopped (in order: the failed chunk itself). */
        at = dirty_bitmap_next_dirty(block_copy_bitmap(r.bcs), 0,
                                     s->total_sectors * CONVERT_SECTOR);
        tool_error("error while %s at byte %" PRId64 ": %s",
                   r.error_is_read ? "reading" : "writing", MAX(at, 0),
                   g_strerror(-r.ret));
    }
    block_copy_free(r.bcs);
    dirty_bitmap_release(o.bitmap);

    if (r.ret == 0 && s->compressed) {
        /* The end of a compressed image: the driver pads its file. */
        ret = blk_pwrite(s->target, 0, 0, NULL, REQ_WRITE_COMPRESSED);
        if (ret < 0) {
            tool_error("error while writing at byte %" PRId64 ": %s",
                       s->total_sectors * CONVERT_SECTOR, g_strerror(-ret));
            return ret;
        }
    }
    return r.ret;
}
