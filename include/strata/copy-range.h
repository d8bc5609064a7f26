/*
 * Copy offload: copy bytes from one edge's node to another's without
 * bringing them through a buffer (copy_file_range(2) between two files,
 * through raw and filters that pass it on).  What the copy engine uses
 * before it falls back to reading and writing (block-copy.h).
 */
#ifndef STRATA_COPY_RANGE_H
#define STRATA_COPY_RANGE_H

#include <stdint.h>
#include "strata/block.h"

/*
 * Copy [src_off, src_off + bytes) of src's node to dst_off in dst's node
 * (coroutine context, both nodes in this loop).  src needs no more than
 * a read does, dst what a write does (BLK_PERM_WRITE); the target's dirty
 * bitmaps and write accounting see a write.  0, or -ENOTSUP when this
 * copy cannot be offloaded (a driver on the way that cannot pass it on,
 * different file systems, unaligned for O_DIRECT, a kernel without
 * copy_file_range...): then the caller reads and writes instead, and
 * whatever was copied is written again.  Other -errno: an I/O error.
 */
int coroutine_fn child_co_copy_range(BlockChild *src, int64_t src_off,
                                     BlockChild *dst, int64_t dst_off,
                                     int64_t bytes, int read_flags,
                                     int write_flags);

#endif
