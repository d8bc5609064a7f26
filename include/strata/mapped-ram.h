/*
 * Guest RAM in a file, in QEMU's migration stream with the "mapped-ram"
 * layout (docs/migration.md "File").
 *
 * The stream is QEMU's: the "QEVM" header, sections, QEMU_VM_EOF.  The RAM
 * section ("ram", version 4) lists the RAM blocks (id, used length) and,
 * after each block's entry, a mapped-ram header (version 1, page size,
 * bitmap offset, pages offset; big endian, packed), then a bitmap of the
 * pages stored (host-order unsigned longs, as QEMU writes it), then, from
 * the next 1 MiB boundary, every page of the block at its index.  Pages
 * whose bit is clear are zero and never written: the file stays sparse.
 * All offsets are absolute file offsets.
 *
 * Writing and reading run on several channels (threads), each with its
 * own descriptor, O_DIRECT ones if asked; the small stream pieces go
 * through a buffered descriptor.  Nothing here touches the main loop or
 * the RAM block registry: the caller resolves blocks first
 * (migration/migrate.c).
 */
#ifndef STRATA_MAPPED_RAM_H
#define STRATA_MAPPED_RAM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <glib.h>

#include "strata/error.h"

#define MR_STREAM_MAGIC     0x5145564du     /* "QEVM" */
#define MR_STREAM_VERSION   3u
#define MR_PAGE_SIZE        4096u           /* QEMU's TARGET_PAGE_SIZE */
#define MR_HDR_VERSION      1u
#define MR_HDR_LEN          28u             /* packed MappedRamHeader */
#define MR_PAGES_ALIGN      0x100000u       /* where a block's pages start */

/* Stream section types (QEMU's QEMU_VM_*). */
enum {
    MR_SEC_EOF = 0x00,
    MR_SEC_START = 0x01,
    MR_SEC_PART = 0x02,
    MR_SEC_END = 0x03,
    MR_SEC_FULL = 0x04,
    MR_SEC_SUBSECTION = 0x05,
    MR_SEC_VMDESCRIPTION = 0x06,
    MR_SEC_CONFIGURATION = 0x07,
    MR_SEC_COMMAND = 0x08,
    MR_SEC_FOOTER = 0x7e,
};

/* Flags in the low bits of the RAM section's 64-bit words. */
enum {
    MR_RAM_ZERO = 0x02,
    MR_RAM_MEM_SIZE = 0x04,
    MR_RAM_PAGE = 0x08,
    MR_RAM_EOS = 0x10,
    MR_RAM_CONTINUE = 0x20,
    MR_RAM_MULTIFD_FLUSH = 0x200,
};

/* One RAM block of a file (as written or as parsed). */
typedef struct MrBlock {
    char *id;
    uint64_t used;              /* bytes */
    uint64_t page_size;         /* from the header: MR_PAGE_SIZE */
    uint64_t bitmap_offset;
    uint64_t pages_offset;
    /* the memory it is saved from or loaded into (NULL: not loaded) */
    uint8_t *host;
    /*
     * The memory's own descriptor (a memfd or a shared file that host maps
     * from offset 0), if has_fd; not owned.  A load writes the pages into
     * it with pwrite rather than reading them into the mapping: shared
     * memory filled whole by a write is never cleared by the kernel first
     * (docs/performance.md "Migration to a file").  Without it (anonymous
     * or private memory, huge pages, a read-only descriptor) pages go
     * through the mapping.
     */
    bool has_fd;
    int fd;
} MrBlock;

static inline uint64_t mr_block_pages(const MrBlock *b)
{
    return b->used / MR_PAGE_SIZE;
}

/* QEMU's BITS_TO_LONGS(pages) * sizeof(unsigned long). */
static inline uint64_t mr_bitmap_bytes(uint64_t pages)
{
    uint64_t bits = 8 * sizeof(unsigned long);
    return (pages + bits - 1) / bits * sizeof(unsigned long);
}

/*
 * A device state stream of a file (docs/migration.md "Device state"): the
 * section "x-strata-state:ID"; its rounds are the chunk lists the loader
 * copies (a plain stream has one).
 */
typedef struct MrDevState {
    char *id;                   /* without the section name's prefix */
    uint32_t section_id;
    bool iterative;             /* START/PART.../END rather than FULL */
    bool ended;
    GArray *rounds;             /* uint64_t: offset of a round's 1st chunk */
    uint64_t bytes;             /* data bytes of all rounds */
} MrDevState;

/* What a file holds, as far as strata reads it. */
typedef struct MrFileInfo {
    char *machine;              /* configuration section, or NULL */
    GPtrArray *capabilities;    /* char *, from the configuration */
    MrBlock *blocks;
    unsigned nb_blocks;
    /*
     * Sections strata does not interpret ("timer", "cpu", ...): the first
     * one stops the walk (its length is not recorded in the stream); the
     * others are named by the file's JSON description when it has one.
     */
    GPtrArray *unread;          /* char * */
    bool reached_eof;           /* QEMU_VM_EOF seen (no unread section) */
    uint64_t file_size;
    GPtrArray *states;          /* MrDevState *, in the file's order */
} MrFileInfo;

void mr_file_info_free(MrFileInfo *info);

/*
 * Walks the stream that starts at @offset of @fd (a regular file): the
 * header, the configuration, the RAM section with its blocks; stops at the
 * first section it cannot interpret (recorded in info->unread) or at the
 * end.  Touches no memory but its own; errors are the file's faults.
 */
MrFileInfo *mr_file_parse(int fd, uint64_t offset, GError **errp);

/* Counters a save or load updates as it goes (read by query-migrate). */
typedef struct MrStats {
    _Atomic uint64_t transferred;   /* bytes written or read, all of them */
    _Atomic uint64_t normal;        /* pages stored */
    _Atomic uint64_t duplicate;     /* zero pages (not stored) */
    _Atomic uint64_t done_bytes;    /* RAM bytes handled so far */
    /* load: pages written into the memory through its descriptor */
    _Atomic uint64_t via_fd;
} MrStats;

typedef struct MrParams {
    unsigned channels;          /* >= 1: threads and descriptors for pages */
    bool direct_io;             /* O_DIRECT on the page descriptors */
    uint64_t max_bandwidth;     /* bytes/s over all pages, 0: unlimited */
    /* device state streams to save after the RAM (strata/device-state.h) */
    struct DsSet *devstate;
} MrParams;

/*
 * The descriptors of one file: @fd for the stream pieces (buffered), and
 * per channel its own (O_DIRECT if direct_io); the caller opens and closes
 * them all (the opening is transport specific: a path, a fdset, a passed
 * descriptor).
 */
typedef struct MrTarget {
    int fd;
    int *chan_fds;
    unsigned nb_chan;
    uint64_t offset;            /* where the stream starts in the file */
} MrTarget;

/*
 * Writes @nb_blocks blocks (id, used, host set; the offsets are computed
 * here) and the stream around them, then fdatasync.  @cancel is polled
 * between page batches.  Blocking: run it in a thread.
 */
bool mr_save(MrTarget *t, MrBlock *blocks, unsigned nb_blocks,
             const MrParams *p, MrStats *stats, atomic_bool *cancel,
             GError **errp);

/*
 * Loads the blocks of @info that have host set (the caller matched them by
 * id and size) from @t: every bitmap is read and checked against the file
 * before any guest page is written; then pages with a set bit are read in,
 * and the others zeroed.  Blocking: run it in a thread.
 */
bool mr_load(MrTarget *t, MrFileInfo *info, const MrParams *p,
             MrStats *stats, atomic_bool *cancel, GError **errp);

/* The layout mr_save uses: fills each block's offsets; returns the end. */
uint64_t mr_layout(MrBlock *blocks, unsigned nb_blocks, uint64_t offset);

#endif
