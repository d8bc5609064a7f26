/*
 * BlockBackend: the handle through which users (tools, jobs, exports, QMP
 * devices) do I/O on a node.  It is the root edge's parent: it takes and
 * shares permissions for its user, checks request ranges, queues requests
 * while its node is drained, and counts what is in flight.
 */
#ifndef STRATA_BACKEND_H
#define STRATA_BACKEND_H

#include "strata/block.h"

BlockBackend *blk_new(uint64_t perm, uint64_t shared);
/* Open a graph and attach it: perms follow the open flags (RDWR -> write). */
BlockBackend *blk_new_open(const char *filename, json_t *options, int flags,
                           GError **errp);
void blk_unref(BlockBackend *blk);

bool blk_insert_node(BlockBackend *blk, BlockNode *bs, GError **errp);
void blk_remove_node(BlockBackend *blk);
BlockNode *blk_node(BlockBackend *blk);
/* A block backend sits directly on bs (QEMU's bdrv_has_blk()). */
bool node_has_backend(BlockNode *bs);
BlockChild *blk_root(BlockBackend *blk);
bool blk_set_perm(BlockBackend *blk, uint64_t perm, uint64_t shared,
                  GError **errp);
void blk_get_perm(BlockBackend *blk, uint64_t *perm, uint64_t *shared);
/* A name for error messages ("block device 'x'"); NULL for anonymous. */
void blk_set_name(BlockBackend *blk, const char *name);
const char *blk_name(const BlockBackend *blk);
/* Writethrough mode: every write is followed by a flush. */
void blk_set_enable_write_cache(BlockBackend *blk, bool wce);
bool blk_enable_write_cache(BlockBackend *blk);
/*
 * Report the node's I/O errors (node_report_io_error(), block-events.h),
 * as a QEMU device with rerror/werror=report does: for backends whose
 * requests come from outside (exports), not for tools or jobs, which
 * handle their errors themselves.  Off by default.
 */
void blk_set_report_io_errors(BlockBackend *blk, bool report);
/* Allow requests past the end (for format drivers growing their file). */
void blk_set_allow_write_beyond_eof(BlockBackend *blk, bool allow);

int64_t blk_getlength(BlockBackend *blk);
bool blk_is_read_only(BlockBackend *blk);

/* Coroutine I/O: return bytes (reads/writes: 0 on success) or -errno. */
int coroutine_fn blk_co_preadv(BlockBackend *blk, int64_t offset,
                               int64_t bytes, IOVec *qiov, int flags);
int coroutine_fn blk_co_pwritev(BlockBackend *blk, int64_t offset,
                                int64_t bytes, IOVec *qiov, int flags);
int coroutine_fn blk_co_pwrite_zeroes(BlockBackend *blk, int64_t offset,
                                      int64_t bytes, int flags);
int coroutine_fn blk_co_pdiscard(BlockBackend *blk, int64_t offset,
                                 int64_t bytes);
int coroutine_fn blk_co_flush(BlockBackend *blk);
int coroutine_fn blk_co_truncate(BlockBackend *blk, int64_t offset, bool exact,
                                 PreallocMode prealloc, GError **errp);

/* Synchronous wrappers (main thread, outside coroutines): run and wait. */
int blk_pread(BlockBackend *blk, int64_t offset, int64_t bytes, void *buf,
              int flags);
int blk_pwrite(BlockBackend *blk, int64_t offset, int64_t bytes,
               const void *buf, int flags);
int blk_preadv(BlockBackend *blk, int64_t offset, int64_t bytes, IOVec *qiov,
               int flags);
int blk_pwritev(BlockBackend *blk, int64_t offset, int64_t bytes, IOVec *qiov,
                int flags);
int blk_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                      int flags);
int blk_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes);
int blk_flush(BlockBackend *blk);
/* VM state area of the root node; saving flushes without a write cache. */
int blk_load_vmstate(BlockBackend *blk, void *buf, int64_t pos, int64_t size);
int blk_save_vmstate(BlockBackend *blk, const void *buf, int64_t pos,
                     int64_t size);
int blk_truncate(BlockBackend *blk, int64_t offset, bool exact,
                 PreallocMode prealloc, GError **errp);

/*
 * Asynchronous requests: start now, call cb(opaque, ret) from the loop when
 * done.  ret is 0 or -errno.  The caller drives the loop.
 */
typedef void BlkCompletionFunc(void *opaque, int ret);
void blk_aio_preadv(BlockBackend *blk, int64_t offset, IOVec *qiov, int flags,
                    BlkCompletionFunc *cb, void *opaque);
void blk_aio_pwritev(BlockBackend *blk, int64_t offset, IOVec *qiov, int flags,
                     BlkCompletionFunc *cb, void *opaque);
void blk_aio_flush(BlockBackend *blk, BlkCompletionFunc *cb, void *opaque);
void blk_aio_pdiscard(BlockBackend *blk, int64_t offset, int64_t bytes,
                      BlkCompletionFunc *cb, void *opaque);
void blk_aio_pwrite_zeroes(BlockBackend *blk, int64_t offset, int64_t bytes,
                           int flags, BlkCompletionFunc *cb, void *opaque);
/* Wait until no request of blk is in flight. */
void blk_drain(BlockBackend *blk);

/*
 * Whether the backend follows its node to another thread (node_set_loop):
 * fixed refuses with QEMU's "Cannot change iothread of active block
 * backend"; else check (if given) may refuse with its own message.  By
 * default a backend follows: its requests run in the node's loop.
 */
typedef bool BlkLoopCheckFunc(void *opaque, StrataLoop *loop, GError **errp);
void blk_set_loop_policy(BlockBackend *blk, bool fixed,
                         BlkLoopCheckFunc *check, void *opaque);
int blk_in_flight(BlockBackend *blk);

/*
 * Reads that go from the page cache into a socket without passing through
 * our memory (block/splice.c).  blk_may_splice: whether blk's node is of a
 * kind that can (a file, or raw or qcow2 straight over one, nobody
 * writing).  blk_co_splice_read: send the first bytes of [offset,
 * offset+bytes) to out_fd with sendfile(): how many (> 0); 0 when this
 * part cannot go that way (a hole, zeroes, compressed or not cached data,
 * a drain): read it normally; -EAGAIN when out_fd is full; -errno.
 * out_fd < 0 only asks: how many bytes could go now.
 */
bool blk_may_splice(BlockBackend *blk);
int coroutine_fn blk_co_splice_read(BlockBackend *blk, int64_t offset,
                                    int64_t bytes, int out_fd);

#endif
