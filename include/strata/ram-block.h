/*
 * Guest RAM the daemon can see: RAM blocks.
 *
 * A RAM block is one region of guest memory that the VM (its monitor,
 * QEMU's "VMM") and strata-daemon both map, MAP_SHARED: a memory backend
 * object (`memory-backend-memfd`, `memory-backend-file`, or a file passed
 * over QMP).  The block's id is the backend's id, as QEMU's RAM block
 * "idstr" is for the backends of a machine started with -object; a
 * migration file names its blocks by these ids, so a file written by one
 * daemon (or by QEMU) restores into the backends whose ids match.
 *
 * The registry is a process-wide list in registration order (the order a
 * migration writes the blocks in).  It is used from the main loop only.
 *
 * Dirty tracking (for live saves, where the VM keeps running while RAM is
 * written) is the second half: a block starts with tracking off; a
 * migration starts it, and each sync hands over the pages written since the
 * previous sync.  How writes are seen is the tracking back end's business
 * (docs/migration.md).
 */
#ifndef STRATA_RAM_BLOCK_H
#define STRATA_RAM_BLOCK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/error.h"

/* Longest id (QEMU's RAM block idstr is 256 bytes with its NUL). */
#define RAM_BLOCK_MAX_ID 255

typedef struct RamBlock RamBlock;

struct RamBlock {
    char *id;
    uint8_t *host;          /* the daemon's mapping, MAP_SHARED */
    uint64_t size;          /* bytes, a multiple of page_size */
    uint32_t page_size;     /* the mapping's page size (4 KiB or huge) */
    int fd;                 /* the memory's descriptor, -1 if none */
    unsigned busy;          /* users (a migration); 0: may be removed */
    void *opaque;           /* the owner's (the memory backend object) */
    void *tracking;         /* the dirty tracking back end's state */
    bool readonly;          /* mapped PROT_READ (a readonly file backend) */
};

/*
 * Registers guest RAM mapped at @host (@size bytes, @page_size pages; @fd
 * stays owned by the caller).  Fails if @id is taken, empty or too long, or
 * the sizes are not page multiples.
 */
RamBlock *ram_block_register(const char *id, void *host, uint64_t size,
                             uint32_t page_size, int fd, void *opaque,
                             GError **errp);
/* Removes a block that is not busy (callers check ram_block_busy first). */
void ram_block_unregister(RamBlock *rb);
RamBlock *ram_block_find(const char *id);
/* The first block, and the next after @rb (NULL at the end). */
RamBlock *ram_block_first(void);
RamBlock *ram_block_next(RamBlock *rb);
unsigned ram_block_count(void);

/* A migration holds the blocks it uses, so object-del waits for it. */
void ram_block_ref(RamBlock *rb);
void ram_block_unref(RamBlock *rb);
static inline bool ram_block_busy(const RamBlock *rb)
{
    return rb->busy > 0;
}

static inline uint64_t ram_block_pages(const RamBlock *rb)
{
    return rb->size / rb->page_size;
}

/*
 * Dirty tracking (implemented by the tracking back end).
 *
 * ram_block_log_start: from now on, writes to the block are recorded.
 * ram_block_log_sync: ORs into @bitmap (one bit per page, bit i of word
 *   i / (8 * sizeof(unsigned long))) the pages written since the previous
 *   sync or the start, forgets them, and returns how many it added.
 * ram_block_log_stop: tracking off; harmless if it was not on.
 */
bool ram_block_log_start(RamBlock *rb, GError **errp);
/*
 * The dirty tracking back end (migration/ram-dirty.c) is a dirty bitmap
 * the VM monitor shares and sets as it (or KVM's dirty log) sees the guest
 * write: ram_block_set_dirty_log maps the bitmap in @fd (not taken; at
 * least one bit per page, rounded up to 64-bit words, native byte order,
 * page i is bit i % 64 of word i / 64) and the block can then be tracked.
 * Set bits before log_start are forgotten (a first pass sends everything).
 * ram_block_clear_dirty_log stops tracking and unmaps it.
 */
bool ram_block_set_dirty_log(RamBlock *rb, int fd, GError **errp);
void ram_block_clear_dirty_log(RamBlock *rb);
/*
 * A dirty log the daemon keeps itself, for monitors that report their
 * writes over QMP (x-strata-memdev-dirty) instead of sharing a bitmap.
 */
bool ram_block_set_private_dirty_log(RamBlock *rb, GError **errp);
/*
 * Mark every page [@offset, @offset + @length) touches (from any thread;
 * either kind of log).  Fails without a log or past the block's end.
 */
bool ram_block_mark_dirty(RamBlock *rb, uint64_t offset, uint64_t length,
                          GError **errp);
bool ram_block_has_dirty_log(const RamBlock *rb);
/* Is tracking on (between log_start and log_stop)? */
bool ram_block_logging(const RamBlock *rb);
int64_t ram_block_log_sync(RamBlock *rb, unsigned long *bitmap,
                           GError **errp);
void ram_block_log_stop(RamBlock *rb);

#endif
