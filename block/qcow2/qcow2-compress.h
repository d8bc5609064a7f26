/*
 * qcow2 compressed clusters: the deflate and zstd codecs, byte-compatible
 * with QEMU 7.2 in both directions.
 *
 * `type` is the header's compression_type (QCOW2_COMPRESSION_ZLIB or
 * QCOW2_COMPRESSION_ZSTD from qcow2-format.h).  One call handles one
 * cluster; the caller reads the compressed bytes named by the L2 descriptor
 * (rounded up to the end of its last 512-byte sector, so data may be
 * followed by unrelated bytes) and writes the returned length.
 *
 * Private to block/qcow2/.
 */
#ifndef STRATA_QCOW2_COMPRESS_H
#define STRATA_QCOW2_COMPRESS_H

#include <stddef.h>
#include <sys/types.h>
#include "strata/coroutine.h"

/*
 * Compress src (src_len bytes, one cluster) into dest (dest_len bytes).
 * Returns the compressed length, -ENOSPC if it does not fit in dest_len
 * (the caller then writes the cluster uncompressed, as QEMU does when the
 * result would not be smaller than cluster_size - 1), -EIO on any other
 * failure, including an unknown type.  Never writes past dest_len.
 */
ssize_t qcow2_compress(int type, void *dest, size_t dest_len,
                       const void *src, size_t src_len);

/*
 * Decompress src (src_len bytes, possibly followed by trailing bytes that
 * are not part of the stream) into exactly dest_len bytes.  Returns 0, or
 * -EIO when the data is corrupt, too short, or the type is unknown.
 */
int qcow2_decompress(int type, void *dest, size_t dest_len,
                     const void *src, size_t src_len);

/*
 * Same as above, run in the thread pool so the calling thread's loop keeps
 * serving other requests (QEMU does compression off the main thread).
 * The buffers must stay valid until the call returns.
 */
ssize_t coroutine_fn qcow2_co_compress(int type, void *dest, size_t dest_len,
                                       const void *src, size_t src_len);
int coroutine_fn qcow2_co_decompress(int type, void *dest, size_t dest_len,
                                     const void *src, size_t src_len);

#endif
