/*
 * block-copy: the one copy engine under every job that moves data
 * (backup, mirror, commit, stream, the copy-before-write filter, and the
 * offline front ends strata-img commit/convert).
 *
 * The engine copies from a source edge to a target edge whatever its
 * bitmap says is left, in chunks that start at the granularity and grow
 * up to max_chunk while copies succeed, many chunks in flight, bounded by
 * a memory budget.  For every range it first asks what the range holds
 * (classify: data, zeroes, or nothing to copy): data is read and written
 * (or offloaded with copy_file_range where both ends allow it), zeroes are
 * written as zero writes (or skipped where the target already reads
 * zeroes), and "skip" ranges are dropped from the bitmap.
 *
 * Bits are cleared when a chunk is taken, before its read: a write that
 * sets them again during the copy (a recording bitmap, as mirror uses)
 * makes the engine copy the range again later.  A chunk that fails sets
 * its bits again.
 *
 * Everything runs in the loop of the source node's thread; the functions
 * marked coroutine_fn run in coroutines of that loop.
 */
#ifndef STRATA_BLOCK_COPY_H
#define STRATA_BLOCK_COPY_H

#include <stdbool.h>
#include <stdint.h>
#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/dirty-bitmap.h"

typedef struct Job Job;
typedef struct BlockCopyState BlockCopyState;

typedef enum BlockCopyKind {
    BLOCK_COPY_DATA,    /* read from the source, write to the target */
    BLOCK_COPY_ZERO,    /* the source reads zeroes: zero-write the target */
    BLOCK_COPY_SKIP,    /* nothing to copy (not allocated where it matters) */
} BlockCopyKind;

/*
 * What the leading part of [offset, offset + bytes) holds: returns a
 * BlockCopyKind (or -errno) and sets *pnum, 0 < *pnum <= bytes, to the
 * length of that leading part.  Coroutine context.
 */
typedef int coroutine_fn BlockCopyClassifyFunc(void *opaque, int64_t offset,
                                               int64_t bytes, int64_t *pnum);

/* A range is done: copied, zeroed or skipped (kind says which). */
typedef void BlockCopyProgressFunc(void *opaque, int64_t offset,
                                   int64_t bytes, BlockCopyKind kind);

/*
 * Write the data of a chunk the caller's way instead of a plain write to
 * the target: buf holds the bytes read from the source.  0 or -errno (a
 * write error).  Coroutine context, one call per data chunk.
 */
typedef int coroutine_fn BlockCopyWriteFunc(void *opaque, int64_t offset,
                                            int64_t bytes, void *buf);

/*
 * Read the data of a chunk the caller's way instead of a plain read of
 * the source: fill buf with bytes [offset, offset + bytes).  0 or -errno
 * (a read error).  Coroutine context, one call per data chunk.
 */
typedef int coroutine_fn BlockCopyReadFunc(void *opaque, int64_t offset,
                                           int64_t bytes, void *buf);

typedef struct BlockCopyOptions {
    /* Edges the caller holds: read from source (CONSISTENT_READ), write to
     * target (WRITE).  target NULL: reads only, for the side effect of the
     * read (stream through a copy-on-read filter reads with
     * REQ_PREFETCH and drops the data). */
    BlockChild *source;
    BlockChild *target;

    /*
     * What is left.  NULL: the engine makes an anonymous, disabled bitmap
     * on the source node, all set (start_clean: none set).  Given: the
     * caller's bitmap (mirror passes a recording one) with the
     * granularity it has; the engine only sets and clears bits in it.
     */
    DirtyBitmap *bitmap;
    bool start_clean;

    /* Bytes; 0: the defaults (granularity max(64 KiB, the target's
     * cluster size); the engine's own chunk limit, memory budget and
     * worker count below, documented in docs/architecture.md "Jobs").
     * granularity: a power of two >= 512, ignored when bitmap is given
     * (the bitmap's is used).  max_chunk is rounded down to the
     * granularity; compress makes it the granularity (one cluster per
     * compressed write).  max_memory must hold one max_chunk (the
     * default max_chunk is made to fit a max_memory given). */
    int64_t granularity;
    int64_t max_chunk;
    uint64_t max_memory;
    int max_workers;

    /* NULL: the source's block status (whole chain, want_zero). */
    BlockCopyClassifyFunc *classify;
    void *classify_opaque;

    bool target_reads_zeroes;   /* zero ranges need no write at all */
    bool unmap;                 /* zero writes may unmap (REQ_MAY_UNMAP) */
    bool compress;              /* write with REQ_WRITE_COMPRESSED */
    bool use_copy_range;        /* try copy_file_range-style offload */
    int read_flags;             /* extra REQ_* flags of reads (PREFETCH) */

    BlockCopyProgressFunc *progress;
    void *progress_opaque;

    /*
     * strata-img convert: its result depends on what the data holds
     * (qemu-img's -S scan turns zero runs in a data buffer into zero
     * writes or nothing), so it writes each data chunk itself (write;
     * no copy offload then), and its chunks are max_chunk from the
     * first one (fixed_chunk: no ramp from the granularity), the
     * requests qemu-img makes, which the scan and the -p steps follow.
     */
    BlockCopyWriteFunc *write;
    void *write_opaque;
    bool fixed_chunk;

    /*
     * strata-img convert again: its disk is several sources end to end
     * (a chunk may span two), read with --salvage's sector-by-sector
     * retry, so it reads each data chunk itself (read; no copy offload
     * then).  length: the bytes to copy, 0: the source's.  It may exceed
     * the source's only with read, classify and bitmap all given (the
     * source edge then only gives buffer alignment; the copy stops at
     * the end of the bitmap if that comes first).
     */
    BlockCopyReadFunc *read;
    void *read_opaque;
    int64_t length;

    /*
     * Write-behind (strata/writeback.h): after every write_behind bytes
     * of data written to the target, ask the kernel to start writing the
     * target's page cache to the disk (one request at a time; 0: never).
     * For a job that flushes its target at the end (commit): the disk
     * works while the job copies instead of after.
     */
    int64_t write_behind;
} BlockCopyOptions;

/*
 * The defaults of max_chunk, max_memory and max_workers: measured with
 * bench/block-copy-bench (docs/architecture.md, "Jobs: the copy engine").
 */
#define BLOCK_COPY_DEFAULT_MAX_CHUNK   (1 << 20)
#define BLOCK_COPY_DEFAULT_MAX_MEMORY  (32 << 20)
#define BLOCK_COPY_DEFAULT_MAX_WORKERS 16

/*
 * block_copy_range's tasks (a guest write waits for them) do not count
 * against max_workers and max_memory: they have these limits of their
 * own (the memory one at least max_chunk), so the engine's buffers never
 * exceed max_memory + max(max_chunk, BLOCK_COPY_URGENT_MEMORY).
 */
#define BLOCK_COPY_URGENT_WORKERS      16
#define BLOCK_COPY_URGENT_MEMORY       (16 << 20)

/*
 * The background makes way for range calls: from each one on, for the
 * next BLOCK_COPY_POLITE_CHUNKS tasks of its own (and while range tasks
 * are in flight), it keeps at most BLOCK_COPY_POLITE_TASKS tasks in
 * flight, BLOCK_COPY_POLITE_WRITES of them writing (jobs/block-copy.c
 * says why).
 */
#define BLOCK_COPY_POLITE_CHUNKS       64
#define BLOCK_COPY_POLITE_TASKS        4
#define BLOCK_COPY_POLITE_WRITES       2

/* Fails only for options that cannot work (a bad granularity...). */
BlockCopyState *block_copy_new(const BlockCopyOptions *opts, GError **errp);
/* Waits for nothing: call when no copy runs. */
void block_copy_free(BlockCopyState *s);

DirtyBitmap *block_copy_bitmap(BlockCopyState *s);
int64_t block_copy_granularity(const BlockCopyState *s);
/* Bytes still to copy: marked (dirty bits x granularity, the tail
 * clipped) plus the chunks in flight, whose bits are already clear (what
 * a job's remaining progress is). */
int64_t block_copy_remaining(const BlockCopyState *s);
/* Mark / unmark a range (rounded out to the granularity by set, in by
 * reset) without copying. */
void block_copy_set_dirty(BlockCopyState *s, int64_t offset, int64_t bytes);
void block_copy_reset_dirty(BlockCopyState *s, int64_t offset, int64_t bytes);

/*
 * Copy until the bitmap is clean, many chunks at once.  With a job:
 * passes its pause points between chunks, obeys its set-speed limit, and
 * returns -ECANCELED once job_is_cancelled().  On an I/O error, waits for
 * the chunks in flight, leaves the failed range marked and returns
 * -errno with *error_is_read telling which side failed: the caller's
 * on-error policy decides whether to call again.  0: clean (a recording
 * bitmap may be dirty again by the time the caller looks).
 * Call it from the job's own coroutine (job NULL: from any coroutine of
 * the source's loop).  Before every pause point and rate-limit sleep the
 * engine waits for its chunks in flight, so a job that is paused or
 * drained has no request of the engine's left; between pause points the
 * job stays busy (a driver's drained_poll may answer
 * block_copy_in_flight(s) > 0).  One block_copy_run at a time.
 */
int coroutine_fn block_copy_run(BlockCopyState *s, Job *job,
                                bool *error_is_read);

/*
 * Copy the marked part of one range now, waiting first for chunks in
 * flight that overlap it (copy-before-write: a guest write to the source
 * calls this before it proceeds).  Same return as block_copy_run.
 * Urgent: its chunks are whole granules of the range only, never wait
 * for the background's workers, memory or rate limit (they have the
 * BLOCK_COPY_URGENT_* limits), and the background makes way for them
 * (BLOCK_COPY_POLITE_*).
 */
int coroutine_fn block_copy_range(BlockCopyState *s, int64_t offset,
                                  int64_t bytes, bool *error_is_read);

/* Wait until no chunk in flight overlaps the range (write-blocking
 * mirror, before it writes the range to the target itself). */
void coroutine_fn block_copy_wait_range(BlockCopyState *s, int64_t offset,
                                        int64_t bytes);

/* Chunks in flight now (drain, tests). */
int block_copy_in_flight(const BlockCopyState *s);

/*
 * Engine-wide counters since block_copy_new (docs, bench, tests).
 * bytes_written: data written to the target (not offloaded ones);
 * bytes_zeroed: zero writes sent to the target; bytes_skipped: ranges
 * dropped without a write (SKIP, and ZERO where the target reads zeroes
 * or there is no target); bytes_offloaded: copied by copy offload;
 * chunks: chunks finished (any kind, failed ones too).
 */
typedef struct BlockCopyStats {
    uint64_t bytes_read, bytes_written, bytes_zeroed, bytes_skipped;
    uint64_t bytes_offloaded;
    uint64_t chunks;
    /* Most buffer bytes in use at once, background and range calls
     * together (a chunk's buffer is its size rounded up to a power of
     * two, at most max_chunk; freed buffers are kept for reuse; kept and
     * background ones never exceed max_memory, range calls' ones
     * max(max_chunk, BLOCK_COPY_URGENT_MEMORY)). */
    uint64_t peak_memory;
    int peak_in_flight;
    uint64_t writeback_kicks;   /* write-behind requests (write_behind) */
    /* Most background offloads in flight at once, and how many ran alone
     * because someone else wrote to the source or above it. */
    int peak_offloading;
    uint64_t narrowed;
} BlockCopyStats;

void block_copy_get_stats(const BlockCopyState *s, BlockCopyStats *st);

/*
 * The job wants to pause (its JobDriver.pause_wanted): every background
 * task in flight leaves idle class now, so that the job reaches its pause
 * point without waiting for the thread pool's watchdog.
 */
void block_copy_promote(BlockCopyState *s);

#endif
