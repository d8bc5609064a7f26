/*
 * Why a direct-io save allocates its page regions first: an O_DIRECT
 * write into a hole makes ext4 allocate under the inode's lock taken
 * exclusively, so io_uring cannot issue it without blocking and hands
 * every such write to a kernel worker (counted: every write of a save
 * into a sparse file went through io-wq, none into an allocated one);
 * a write into allocated, unwritten extents takes the lock shared and is
 * issued inline (docs/performance.md "Migration to a file").  The plain
 * writer the save is measured against allocates its file the same way.
 *
 * The allocation is one call per block before any channel starts: ext4's
 * fallocate waits for all direct I/O in flight, so a call per run would
 * drain the channels' queues.  The pages the save then leaves as holes
 * (long zero stretches) are punched out after the channels have
 * finished, so the file is as sparse as without it.
 */
#include <errno.h>
#include <fcntl.h>

#include "strata/mapped-ram.h"
#include "mr-internal.h"
#include "prealloc.h"

bool mr_prealloc(int fd, const MrBlock *b)
{
    uint64_t len = mr_block_pages(b) * MR_PAGE_SIZE;

    return len == 0 ||
           fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)b->pages_offset,
                     (off_t)len) == 0;
}

static bool punch(int fd, const MrBlock *b, uint64_t first, uint64_t n,
                  GError **errp)
{
    uint64_t off = b->pages_offset + first * MR_PAGE_SIZE;

    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
                  (off_t)(n * MR_PAGE_SIZE)) == 0 || errno == EOPNOTSUPP) {
        return true;
    }
    error_setg_errno(errp, errno, "Could not free the unused pages of RAM "
                     "block '%s' at offset %" G_GUINT64_FORMAT, b->id, off);
    return false;
}

bool mr_punch_unwritten(int fd, const MrBlock *b,
                        const unsigned long *written, GError **errp)
{
    uint64_t pages = mr_block_pages(b);
    uint64_t i = 0;

    while (i < pages) {
        /* whole words of written pages at once */
        if (i % MR_WORD_BITS == 0 && i + MR_WORD_BITS <= pages &&
            written[i / MR_WORD_BITS] == ~0ul) {
            i += MR_WORD_BITS;
            continue;
        }
        if (mr_test_bit(written, i)) {
            i++;
            continue;
        }
        uint64_t j = i + 1;
        while (j < pages && !mr_test_bit(written, j)) {
            j++;
        }
        if (!punch(fd, b, i, j - i, errp)) {
            return false;
        }
        i = j;
    }
    return true;
}
