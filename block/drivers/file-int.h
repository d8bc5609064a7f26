/*
 * Private to the file, host_device and host_cdrom drivers: their shared
 * state and the functions file.c, file-grow.c and file-host.c call across.
 */
#ifndef STRATA_BLOCK_DRIVERS_FILE_INT_H
#define STRATA_BLOCK_DRIVERS_FILE_INT_H

#include <sys/types.h>
#include "strata/aio.h"
#include "strata/block-driver.h"
#include "../locks.h"

typedef struct FileState {
    int fd;
    int open_flags;          /* O_* flags of fd */
    char *filename;
    bool is_device;          /* host_device or host_cdrom driver */
    /*
     * host_cdrom: opened with O_NONBLOCK, since opening a drive without a
     * disc must still succeed (the medium comes and goes).
     */
    int extra_open_flags;
    AioType aio;
    /* Accepted as QEMU does; the engines batch per loop iteration anyway. */
    uint64_t aio_max_batch;
    /* Only matters to cache invalidation on incoming migration. */
    bool drop_cache;
    bool use_lock;
    ImageLock lock;

    bool needs_alignment;    /* O_DIRECT: requests must meet the two below */
    uint32_t request_alignment;
    uint32_t buf_align;

    /*
     * The file lives in memory (tmpfs, ramfs): small buffered reads are
     * done in the calling thread (see file_read_inline).
     */
    bool in_memory;

    bool has_discard;
    bool has_write_zeroes;
    bool has_fallocate;
    /* errno of a failed fdatasync without O_DIRECT: flushes fail from then on */
    int page_cache_inconsistent;

    /*
     * Growing ahead.  An O_DIRECT write past the end of a file on ext4 or
     * XFS waits for every other request in flight and extends the file
     * alone, so a format appending clusters runs at depth 1.  Where nobody
     * else may write or resize the file, its real length (phys_len) is
     * therefore kept ahead of the writes, preallocated in big steps, while
     * len is the length the writes gave it, which is what the node
     * reports; the file is cut back to len when growing ahead ends (close,
     * reopen, truncate).  After a crash the tail stays: it reads as
     * zeroes, and formats ignore what lies past their last cluster.
     * len < 0: not growing ahead.
     */
    int64_t len, phys_len;
    CoMutex grow_lock;
    /*
     * Past zero_base (the length when growing ahead began), the ranges
     * that writes have covered, started or finished: sorted, disjoint
     * [start, end) pairs.  Anything else below phys_len was never written
     * and reads as zeroes, so a zero write there has nothing to do.  NULL
     * when there were too many to keep: then no zero write is skipped.
     */
    int64_t zero_base;
    GArray *written;

    /*
     * The last data extent block status found, [data_start, data_end)
     * (empty when equal): a sequential reader asking for block status
     * before each read (an NBD export's structured reads) then costs two
     * lseek per extent instead of per request.  Writes only add data, so
     * only what can make holes forgets it: zero writes, discards,
     * truncation, a new fd.  hole_ops counts those in flight (they run in
     * the thread pool); no extent is remembered while one is, since its
     * lseek may have raced with the punch.  Another process making holes
     * in the file goes unseen, as everywhere block status is cached.
     */
    int64_t data_start, data_end;
    unsigned hole_ops;

    /* Pending reopen. */
    int reopen_fd;
    int reopen_open_flags;
    LockBytes reopen_held;
    uint32_t reopen_request_alignment, reopen_buf_align;
    bool reopen_drop_cache;
} FileState;

/* file-host.c */
extern const BlockDriver bdrv_host_device;

/* file.c */
int file_fallocate(int fd, int mode, off_t offset, off_t len);
int file_open_common(BlockNode *bs, json_t *options, int flags,
                     bool device, GError **errp);
void file_close(BlockNode *bs);
bool file_strip_prefix(const char *filename, const char *prefix,
                  json_t *options);
void file_refresh_limits(BlockNode *bs);
int file_check_perm(BlockNode *bs, uint64_t perm, uint64_t shared,
                    GError **errp);
void file_set_perm(BlockNode *bs, uint64_t perm, uint64_t shared);
void file_abort_perm_update(BlockNode *bs);
int file_reopen_prepare(ReopenState *rs, GError **errp);
void file_reopen_commit(ReopenState *rs);
void file_reopen_abort(ReopenState *rs);
int coroutine_fn file_co_preadv(BlockNode *bs, int64_t offset,
                                int64_t bytes, IOVec *qiov,
                                size_t qiov_offset, int flags);
int coroutine_fn file_co_pwritev(BlockNode *bs, int64_t offset,
                                 int64_t bytes, IOVec *qiov,
                                 size_t qiov_offset, int flags);
int coroutine_fn file_co_flush_to_disk(BlockNode *bs);
int coroutine_fn file_co_pwrite_zeroes(BlockNode *bs, int64_t offset,
                                       int64_t bytes, int flags);
int coroutine_fn file_co_pdiscard(BlockNode *bs, int64_t offset,
                                  int64_t bytes);
int coroutine_fn file_co_truncate(BlockNode *bs, int64_t offset,
                                  bool exact, PreallocMode prealloc,
                                  GError **errp);
int64_t file_getlength(BlockNode *bs);
int64_t file_get_allocated_file_size(BlockNode *bs);
int file_get_info(BlockNode *bs, BlockDriverInfo *bdi);
int coroutine_fn file_co_block_status(BlockNode *bs, bool want_zero,
                                      int64_t offset, int64_t bytes,
                                      int64_t *pnum, int64_t *map,
                                      BlockNode **file);
bool file_get_file_id(BlockNode *bs, uint64_t *dev, uint64_t *ino);

/* file-copy.c */
int coroutine_fn file_co_copy_range_from(BlockNode *bs, BlockChild *src,
                                         int64_t src_off, BlockChild *dst,
                                         int64_t dst_off, int64_t bytes,
                                         int read_flags, int write_flags);
int coroutine_fn file_co_copy_range_to(BlockNode *bs, BlockChild *src,
                                       int64_t src_off, BlockChild *dst,
                                       int64_t dst_off, int64_t bytes,
                                       int read_flags, int write_flags);
/*
 * A write of a coroutine inside pool_background_writes_begin (a stream's
 * own copy): pwritev in the thread pool, at idle class while its frame is
 * not promoted (strata/pool-class.h).  Returns the bytes written or
 * -errno, as aio_co_rw().
 */
int64_t coroutine_fn file_co_write_background(int fd, uint64_t offset,
                                              const struct iovec *iov,
                                              int niov);

/* file-grow.c */
void file_data_cache_forget(FileState *s);
void file_hole_op_begin(FileState *s);
void file_hole_op_end(FileState *s);
void file_grow_ahead_end(FileState *s);
void file_mark_written(FileState *s, int64_t start, int64_t end);
bool file_never_written(FileState *s, int64_t start, int64_t end);
void coroutine_fn file_grow_ahead(BlockNode *bs, int64_t end);
void file_grew(FileState *s, int64_t end);

/* file-inline.c: small requests to a file in memory, in this thread */
bool file_fd_in_memory(int fd);
bool file_read_inline(const FileState *s, AioOp op, const IOVec *v);
bool file_write_inline(const FileState *s, AioOp op, const IOVec *v);
int64_t file_rw_here(FileState *s, AioOp op, int64_t offset, const IOVec *v);

#endif
