/*
 * qcow2 compressed clusters: deflate and zstd, as QEMU 7.2 writes and reads
 * them.
 *
 * On-disk streams (docs/interop/qcow2.txt, "Compressed Clusters"):
 *  - zlib: a raw deflate stream (no zlib header or checksum) made with a
 *    4 KiB window (windowBits -12), level Z_DEFAULT_COMPRESSION, memLevel 9.
 *    Using the very same parameters makes our clusters byte-identical to
 *    QEMU's with the same zlib.
 *  - zstd: one or more plain zstd frames, written by a single
 *    ZSTD_compressStream2(ZSTD_e_end) call with default parameters, so the
 *    frame records its content size; readers must not rely on that and
 *    decode by streaming.
 *
 * The descriptor gives the compressed size only to a 512-byte sector, so
 * the input of a decompression is usually followed by unrelated bytes (the
 * next compressed cluster, or zeroes).  Both decoders stop as soon as the
 * cluster is complete and ignore what follows; a stream that ends before
 * the cluster is full is corrupt.  As in QEMU, a deflate stream that would
 * produce more than one cluster is cut at the cluster size, while a zstd
 * frame that does not end exactly at the cluster size is refused.
 *
 * Codec state is expensive to set up (a deflate state is about 270 KiB, a
 * zstd context more) and a cluster is small, so each thread keeps one set
 * of contexts and resets it between calls instead of creating it per
 * cluster as QEMU does.  A reset context gives exactly the output of a new
 * one.  Calls never yield, so one thread never uses its set twice at once;
 * the set is freed when the thread exits (thread-pool workers exit when
 * idle).
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define ZLIB_CONST
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "strata/loop.h"
#include "qcow2-format.h"
#include "qcow2-compress.h"

/* QEMU's deflate parameters: small window, no header. */
#define QCOW2_DEFLATE_WBITS (-12)
#define QCOW2_DEFLATE_MEMLEVEL 9

typedef struct CodecSet {
    z_stream deflate;
    bool deflate_ready;
    z_stream inflate;
    bool inflate_ready;
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
} CodecSet;

static __thread CodecSet *thread_codecs;
static pthread_key_t codec_key;
static pthread_once_t codec_key_once = PTHREAD_ONCE_INIT;
static bool codec_key_ok;

static void codec_set_free(void *opaque)
{
    CodecSet *c = opaque;

    if (c->deflate_ready) {
        deflateEnd(&c->deflate);
    }
    if (c->inflate_ready) {
        inflateEnd(&c->inflate);
    }
    ZSTD_freeCCtx(c->cctx);
    ZSTD_freeDCtx(c->dctx);
    free(c);
}

static void codec_key_init(void)
{
    codec_key_ok = pthread_key_create(&codec_key, codec_set_free) == 0;
}

/* The calling thread's codec set, or NULL when out of memory. */
static CodecSet *codec_set_get(void)
{
    if (thread_codecs) {
        return thread_codecs;
    }
    pthread_once(&codec_key_once, codec_key_init);
    if (!codec_key_ok) {
        return NULL;
    }
    CodecSet *c = calloc(1, sizeof(*c));
    if (!c) {
        return NULL;
    }
    if (pthread_setspecific(codec_key, c) != 0) {
        free(c);
        return NULL;
    }
    thread_codecs = c;
    return c;
}

/* ---- zlib ---- */

static ssize_t zlib_compress(CodecSet *c, void *dest, size_t dest_len,
                             const void *src, size_t src_len)
{
    z_stream *s = &c->deflate;
    ssize_t ret;

    if (!c->deflate_ready) {
        memset(s, 0, sizeof(*s));
        if (deflateInit2(s, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                         QCOW2_DEFLATE_WBITS, QCOW2_DEFLATE_MEMLEVEL,
                         Z_DEFAULT_STRATEGY) != Z_OK) {
            return -EIO;
        }
        c->deflate_ready = true;
    }
    /* zlib counts in uInt: clip dest (a short buffer only means -ENOSPC). */
    s->next_in = src;
    s->avail_in = src_len;
    s->next_out = dest;
    s->avail_out = dest_len > UINT_MAX ? UINT_MAX : dest_len;

    switch (deflate(s, Z_FINISH)) {
    case Z_STREAM_END:
        ret = s->total_out;
        break;
    case Z_OK:
    case Z_BUF_ERROR:
        /* Z_FINISH stopped short: the output did not fit. */
        ret = -ENOSPC;
        break;
    default:
        ret = -EIO;
        break;
    }
    if (deflateReset(s) != Z_OK) {
        deflateEnd(s);
        c->deflate_ready = false;
    }
    return ret;
}

static int zlib_decompress(CodecSet *c, void *dest, size_t dest_len,
                           const void *src, size_t src_len)
{
    z_stream *s = &c->inflate;
    int ret = 0;

    if (!c->inflate_ready) {
        memset(s, 0, sizeof(*s));
        if (inflateInit2(s, QCOW2_DEFLATE_WBITS) != Z_OK) {
            return -EIO;
        }
        c->inflate_ready = true;
    }
    /*
     * Input past UINT_MAX can only be trailing bytes (a cluster is at most
     * 2 MiB and deflate never expands it much), so clip it.
     */
    s->next_in = src;
    s->avail_in = src_len > UINT_MAX ? UINT_MAX : src_len;
    s->next_out = dest;
    s->avail_out = dest_len;

    /*
     * Z_BUF_ERROR with a full output means the cluster is complete but the
     * stream goes on (or its end marker lies past what we were given): QEMU
     * takes the cluster, and so do we.
     */
    int r = inflate(s, Z_FINISH);
    if ((r != Z_STREAM_END && r != Z_BUF_ERROR) || s->avail_out != 0) {
        ret = -EIO;
    }
    if (inflateReset(s) != Z_OK) {
        inflateEnd(s);
        c->inflate_ready = false;
    }
    return ret;
}

/* ---- zstd ---- */

static ssize_t zstd_compress(CodecSet *c, void *dest, size_t dest_len,
                             const void *src, size_t src_len)
{
    if (!c->cctx) {
        c->cctx = ZSTD_createCCtx();
        if (!c->cctx) {
            return -EIO;
        }
    }
    ZSTD_CCtx *cctx = c->cctx;
    ZSTD_outBuffer out = { .dst = dest, .size = dest_len, .pos = 0 };
    ZSTD_inBuffer in = { .src = src, .size = src_len, .pos = 0 };
    ssize_t ret;

    /*
     * ZSTD_e_end on the first call of a session tells zstd the whole input
     * up front, so the frame records its content size as QEMU's does.  A
     * nonzero return asks for more room; more calls only help if the
     * previous one made progress, which it does not once dest is full.
     */
    for (;;) {
        size_t before = out.pos;
        size_t r = ZSTD_compressStream2(cctx, &out, &in, ZSTD_e_end);
        if (ZSTD_isError(r)) {
            ret = ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall
                ? -ENOSPC : -EIO;
            break;
        }
        if (r == 0) {
            ret = out.pos;
            break;
        }
        if (out.pos == out.size || out.pos == before) {
            ret = -ENOSPC;
            break;
        }
    }
    /* Drop any half-written frame so the next call starts clean. */
    ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only);
    return ret;
}

static int zstd_decompress(CodecSet *c, void *dest, size_t dest_len,
                           const void *src, size_t src_len)
{
    if (!c->dctx) {
        c->dctx = ZSTD_createDCtx();
        if (!c->dctx) {
            return -EIO;
        }
    }
    ZSTD_DCtx *dctx = c->dctx;
    ZSTD_outBuffer out = { .dst = dest, .size = dest_len, .pos = 0 };
    ZSTD_inBuffer in = { .src = src, .size = src_len, .pos = 0 };
    size_t r = 0;
    int ret = 0;

    /*
     * Frames follow one another until the cluster is full; each call
     * finishes at most one frame (it returns 0 exactly then).  A call that
     * consumes nothing and produces nothing means the input ran out or is
     * unusable: stop instead of spinning.
     */
    while (out.pos < out.size) {
        size_t in_before = in.pos, out_before = out.pos;
        r = ZSTD_decompressStream(dctx, &out, &in);
        if (ZSTD_isError(r)) {
            ret = -EIO;
            break;
        }
        if (in.pos == in_before && out.pos == out_before) {
            ret = -EIO;
            break;
        }
    }
    /*
     * The cluster is full but the frame still has content: the data is
     * longer than a cluster, hence damaged.  Trailing bytes after a
     * finished frame are fine.
     */
    if (ret == 0 && r != 0) {
        ret = -EIO;
    }
    ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only);
    return ret;
}

/* ---- entry points ---- */

ssize_t qcow2_compress(int type, void *dest, size_t dest_len,
                       const void *src, size_t src_len)
{
    CodecSet *c;

    /* Clusters are at most 2 MiB; a larger src is a caller bug. */
    if (src_len > UINT_MAX || !(c = codec_set_get())) {
        return -EIO;
    }
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return zlib_compress(c, dest, dest_len, src, src_len);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_compress(c, dest, dest_len, src, src_len);
    default:
        return -EIO;
    }
}

int qcow2_decompress(int type, void *dest, size_t dest_len,
                     const void *src, size_t src_len)
{
    CodecSet *c;

    if (dest_len > UINT_MAX || !(c = codec_set_get())) {
        return -EIO;
    }
    switch (type) {
    case QCOW2_COMPRESSION_ZLIB:
        return zlib_decompress(c, dest, dest_len, src, src_len);
    case QCOW2_COMPRESSION_ZSTD:
        return zstd_decompress(c, dest, dest_len, src, src_len);
    default:
        return -EIO;
    }
}

typedef struct CodecJob {
    bool compress;
    int type;
    void *dest;
    size_t dest_len;
    const void *src;
    size_t src_len;
    ssize_t ret;
} CodecJob;

static int codec_job_run(void *opaque)
{
    CodecJob *job = opaque;

    if (job->compress) {
        job->ret = qcow2_compress(job->type, job->dest, job->dest_len,
                                  job->src, job->src_len);
    } else {
        job->ret = qcow2_decompress(job->type, job->dest, job->dest_len,
                                    job->src, job->src_len);
    }
    return 0;
}

ssize_t coroutine_fn qcow2_co_compress(int type, void *dest, size_t dest_len,
                                       const void *src, size_t src_len)
{
    CodecJob job = {
        .compress = true, .type = type, .dest = dest, .dest_len = dest_len,
        .src = src, .src_len = src_len,
    };

    thread_pool_co_run(codec_job_run, &job);
    return job.ret;
}

int coroutine_fn qcow2_co_decompress(int type, void *dest, size_t dest_len,
                                     const void *src, size_t src_len)
{
    CodecJob job = {
        .compress = false, .type = type, .dest = dest, .dest_len = dest_len,
        .src = src, .src_len = src_len,
    };

    thread_pool_co_run(codec_job_run, &job);
    return job.ret;
}
