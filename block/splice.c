/*
 * Reads that skip our memory (see blk_co_splice_read in strata/backend.h).
 *
 * An NBD export of an image in the page cache otherwise copies every byte
 * twice in the server: page cache into a buffer, buffer into the socket.
 * sendfile() instead hands the socket references to the page cache pages,
 * and the client's read is the only copy.  That is only the same read as
 * blk_co_preadv where nothing between the backend and the host file acts
 * on reads: so the node must be a file node, or a raw or qcow2 node
 * straight over one (no filter, no encryption, no compression: block
 * status must say "data, stored here"), nobody may hold the write
 * permission on it, and the file must not be O_DIRECT.  The mapping and
 * the sendfile() happen without yielding in between, so no request of
 * ours can change the mapping under it.  Pages not in the page cache are
 * left to the normal path: sendfile() would read them synchronously and
 * stall the loop.
 */
#include <errno.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "block-int.h"

/* cachestat(2), Linux 6.5; older headers lack it. */
#if !defined(__NR_cachestat) && (defined(__x86_64__) || \
    defined(__aarch64__) || defined(__riscv))
#define __NR_cachestat 451
#endif

struct splice_cachestat_range {
    uint64_t off, len;
};

struct splice_cachestat {
    uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted,
             nr_recently_evicted;
};

static bool no_cachestat;

/* Whether every page of [off, off+len) of fd is in the page cache. */
static bool range_cached(int fd, int64_t off, int64_t len)
{
#ifdef __NR_cachestat
    if (!no_cachestat) {
        struct splice_cachestat_range r = { off, len };
        struct splice_cachestat cs;
        long page = sysconf(_SC_PAGESIZE);
        uint64_t pages = (off + len + page - 1) / page - off / page;
        if (syscall(__NR_cachestat, fd, &r, &cs, 0) == 0) {
            return cs.nr_cache >= pages;
        }
        if (errno == ENOSYS || errno == EPERM) {
            no_cachestat = true;    /* seccomp or an old kernel */
        }
    }
#endif
    (void)fd, (void)off, (void)len;
    return false;
}

static bool is_child_of(BlockNode *child, BlockNode *parent)
{
    for (GList *l = parent->children; l; l = l->next) {
        if (((BlockChild *)l->data)->bs == child) {
            return true;
        }
    }
    return false;
}

static bool nobody_writes(const BlockNode *bs)
{
    uint64_t perm, shared;
    node_get_cumulative_perm(bs, &perm, &shared);
    return !(perm & (BLK_PERM_WRITE | BLK_PERM_RESIZE));
}

bool blk_may_splice(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);

    if (!bs || !bs->drv || !nobody_writes(bs)) {
        return false;
    }
    if (file_node_page_cache_fd(bs) >= 0) {
        return true;
    }
    const char *fmt = bs->drv->format_name;
    return fmt && (!strcmp(fmt, "raw") || !strcmp(fmt, "qcow2"));
}

int coroutine_fn blk_co_splice_read(BlockBackend *blk, int64_t offset,
                                    int64_t bytes, int out_fd)
{
    BlockNode *bs = blk_node(blk);
    BlockNode *file = NULL;
    int64_t pnum = 0, map = 0;

    if (!blk_may_splice(blk) || node_is_quiesced(bs) || offset < 0 ||
        bytes <= 0 || offset + bytes > blk_getlength(blk)) {
        return 0;
    }
    int st = node_co_block_status(bs, false, offset, bytes, &pnum, &map,
                                  &file);
    /*
     * The status may have waited for metadata: check again that nobody
     * took the node meanwhile, then no yield until the data is sent.
     */
    if (st < 0 || pnum <= 0 || !file || blk_node(blk) != bs ||
        node_is_quiesced(bs) || !blk_may_splice(blk) ||
        (st & (BLOCK_DATA | BLOCK_ZERO | BLOCK_OFFSET_VALID)) !=
            (BLOCK_DATA | BLOCK_OFFSET_VALID) ||
        (file != bs && (!is_child_of(file, bs) || !nobody_writes(file)))) {
        return 0;
    }
    int fd = file_node_page_cache_fd(file);
    if (fd < 0 || !range_cached(fd, map, MIN(pnum, bytes))) {
        return 0;
    }
    if (out_fd < 0) {
        return MIN(pnum, bytes);
    }
    off_t pos = map;
    ssize_t n = sendfile(out_fd, fd, &pos, MIN(pnum, bytes));
    if (n < 0) {
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) {
            return -EAGAIN;
        }
        /* Sockets or files that cannot splice: the caller reads instead. */
        return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP ||
               err == EINTR ? 0 : -err;
    }
    if (n > 0) {
        bs->rd_bytes += n;
        bs->rd_ops++;
        if (file != bs) {
            file->rd_bytes += n;
            file->rd_ops++;
        }
    }
    return n;
}
