/*
 * Between the stream pieces (mapped-ram.c) and the page channels
 * (channels.c).
 */
#ifndef MIGRATION_MR_INTERNAL_H
#define MIGRATION_MR_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "strata/mapped-ram.h"

#define MR_WORD_BITS (8 * sizeof(unsigned long))

/* A page of zeros (the first words and the last checked first: cheap). */
static inline bool mr_page_is_zero(const uint8_t *p)
{
    const uint64_t *q = (const uint64_t *)p;
    if (q[0] || q[1] || q[MR_PAGE_SIZE / 8 - 1]) {
        return false;
    }
    return memcmp(p, p + 16, MR_PAGE_SIZE - 16) == 0;
}

/* Bits of the page bitmaps the savers keep (one per page). */
static inline bool mr_test_bit(const unsigned long *bm, uint64_t i)
{
    return (bm[i / MR_WORD_BITS] >> (i % MR_WORD_BITS)) & 1;
}

static inline void mr_set_bit(unsigned long *bm, uint64_t i)
{
    bm[i / MR_WORD_BITS] |= 1ul << (i % MR_WORD_BITS);
}

/*
 * The most a save writes in one call through the page cache (no
 * direct-io).  The length of a buffered write sets the size of the
 * page-cache folios ext4 allocates for it (large folios, Linux 6.x): a
 * write of 2 MiB or more gets 2 MiB folios, which only free blocks of
 * order 9 and up can give.  In a VM with free page reporting (this
 * machine kind: page_reporting_order 9) exactly those blocks have been
 * handed back to the host, so every page of such a folio is memory the
 * host must provide again on first touch: 4 MiB writes copied 1 GiB into
 * the page cache in 14 to 21 s (2 MiB: 42 s), writes of 1 MiB or less in
 * 0.4 to 3.6 s (the same 4 threads, docs/performance.md "Migration to a
 * file", "Why a save through the page cache was slow").  Smaller folios come from the lower
 * free lists, which are never reported.  With O_DIRECT there is no page
 * cache: those writes stay whole.
 */
#define MR_BUFFERED_WRITE_MAX (256u << 10)

/* From the header to the first block's mapped-ram header. */
GByteArray *mr_stream_head(const MrBlock *blocks, unsigned nb_blocks);
/* One block's entry (for the blocks after the first). */
GByteArray *mr_block_entry(const MrBlock *b);
/* What follows the last block's pages, up to QEMU_VM_EOF. */
GByteArray *mr_stream_tail(void);
/* mr_stream_tail in two: the RAM section's end, and QEMU_VM_EOF with the
 * JSON description @vmdesc; device state goes between them. */
GByteArray *mr_stream_ram_end(void);
GByteArray *mr_stream_eof(const char *vmdesc);

/*
 * The whole of buf at off (short writes and EINTR retried), counted in
 * stats->transferred (stats may be NULL); the error a user reads.
 */
bool mr_pwrite_all(int fd, const void *buf, size_t len, uint64_t off,
                   MrStats *stats, GError **errp);
/* mr_pwrite_all of a stream piece, which it takes. */
bool mr_put_bytes(int fd, GByteArray *b, uint64_t off, MrStats *stats,
                  GError **errp);

/*
 * The work of a save's or restore's channels: the pages of the blocks
 * that have work cut into batches, handed out in order through one
 * atomic counter (channels take the next batch when they are ready, so
 * they write disjoint, mostly distant ranges); the first failure, or a
 * cancel seen between batches, stops them all; max-bandwidth is one
 * budget for all of them.
 */
typedef struct MrQueue {
    uint64_t batch;             /* pages; a multiple of MR_WORD_BITS, so
                                   no two channels share a bitmap word */
    unsigned nb;
    uint64_t *first;            /* per block, prefix sums; [nb]: all */
    uint64_t *pages;            /* per block */
    _Atomic uint64_t next;
    atomic_bool *cancel;
    atomic_bool failed;
    GMutex lock;
    GError *err;
    uint64_t max_bandwidth;     /* bytes/s, 0: none */
    int64_t rate_start;
    uint64_t rate_bytes;
} MrQueue;

/* @work[i] NULL: block i has no work. */
void mr_queue_init(MrQueue *q, const MrBlock *blocks, unsigned nb,
                   unsigned long *const *work, uint64_t batch,
                   atomic_bool *cancel, uint64_t max_bandwidth);
/* The next batch (block @bi, pages [@s, @e)); false when there is none
 * left or the work has failed or was cancelled. */
bool mr_queue_next(MrQueue *q, unsigned *bi, uint64_t *s, uint64_t *e);
/* The first error is kept (and the others dropped); all channels stop. */
void mr_queue_fail(MrQueue *q, GError *err);
static inline bool mr_queue_failed(MrQueue *q)
{
    return atomic_load(&q->failed);
}
/* Counts @bytes against max-bandwidth and sleeps until they are due. */
void mr_queue_throttle(MrQueue *q, uint64_t bytes);
/* Frees the queue; false with its error if the work failed. */
bool mr_queue_finish(MrQueue *q, GError **errp);

#endif
