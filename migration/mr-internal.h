/*
 * Between the stream pieces (mapped-ram.c) and the page channels
 * (channels.c).
 */
#ifndef MIGRATION_MR_INTERNAL_H
#define MIGRATION_MR_INTERNAL_H

#include "strata/mapped-ram.h"

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

#endif
