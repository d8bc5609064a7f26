/*
 * The transmission phase.  One coroutine reads requests; each request is
 * then served in a coroutine of its own, so a slow read does not hold up
 * the writes behind it.  At most NBD_MAX_INFLIGHT requests of a client are
 * in flight: past that the reader stops reading, and the client's own
 * socket buffer pushes back on it, not our memory.  Replies are written
 * whole under the client's send lock.
 *
 * Validation follows QEMU 7.2's server: the same checks in the same order
 * with the same messages (structured clients see them), errors as EINVAL
 * except the I/O results themselves; a bad magic or a write whose payload
 * we did not read ends the connection.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include "strata/block.h"
#include "strata/iov.h"
#include "bufpool.h"
#include "nbd-int.h"
#include "proto.h"

typedef struct NbdRequest {
    NbdClient *client;
    uint16_t flags, type;
    uint64_t handle, from;
    uint32_t len;
    uint8_t *data;          /* a write's payload */
    char *error;            /* refused by validation: the message */
    bool incomplete;        /* payload not read: disconnect after replying */
} NbdRequest;

/* ---- Replies ---- */

/*
 * Replies are written in batches: the first request coroutine with a
 * reply becomes the writer, lets the loop run the other coroutines whose
 * I/O completed in the same iteration (they queue their replies behind
 * it), then writes everything queued with one sendmsg and wakes the
 * others.  At depth 32 that is a fraction of the system calls and of the
 * client wake-ups of one write per reply.  A queued reply lives on its
 * coroutine's stack: that coroutine sleeps until its reply is written.
 */
typedef struct OutReply {
    struct iovec *iov;
    int niov;
    int ret;
    bool done;
    bool takes_socket;      /* wants the socket to itself (send_lock) */
    Coroutine *co;
} OutReply;

#define BATCH_REPLIES 64    /* at most 3 iovecs each: far below IOV_MAX */

/*
 * Write the queue out, as the coroutine holding the socket (client->
 * writing).  A coroutine waiting in send_lock is handed the socket when
 * its turn comes, with everything queued before it written: it then
 * carries on with the rest of the queue in send_unlock.
 */
static void coroutine_fn flush_queue(NbdClient *client)
{
    while (!g_queue_is_empty(&client->outq)) {
        OutReply *batch[BATCH_REPLIES];
        struct iovec vec[BATCH_REPLIES * 3];
        int n = 0, nv = 0;
        OutReply *head = g_queue_peek_head(&client->outq);
        if (head->takes_socket) {
            g_queue_pop_head(&client->outq);
            head->done = true;
            co_wake(head->co);
            return;
        }
        while (n < BATCH_REPLIES && !g_queue_is_empty(&client->outq)) {
            OutReply *r = g_queue_peek_head(&client->outq);
            if (r->takes_socket) {
                break;
            }
            g_queue_pop_head(&client->outq);
            g_assert(r->niov <= 3);
            memcpy(vec + nv, r->iov, r->niov * sizeof(*vec));
            nv += r->niov;
            batch[n++] = r;
        }
        int ret = nbd_channel_writev(client->ch, vec, nv);
        for (int i = 0; i < n; i++) {
            batch[i]->ret = ret;
            batch[i]->done = true;
            if (batch[i]->co != co_self()) {
                co_wake(batch[i]->co);
            }
        }
    }
    client->writing = false;
}

static int coroutine_fn send_iov(NbdClient *client, struct iovec *iov,
                                 int niov)
{
    OutReply me = { .iov = iov, .niov = niov, .co = co_self() };

    g_queue_push_tail(&client->outq, &me);
    if (client->writing) {
        while (!me.done) {
            co_yield();
        }
        return me.ret;
    }
    client->writing = true;
    /*
     * Let the replies completing in this loop iteration join the batch;
     * with no other request in flight none can (a client that keeps one
     * request in flight, as backup tools do): no round through the loop.
     */
    if (client->inflight > 1) {
        co_wake(co_self());
        co_yield();
    }
    flush_queue(client);
    return me.ret;
}

/* The socket to ourselves, after every reply queued before us. */
static void coroutine_fn send_lock(NbdClient *client)
{
    OutReply me = { .takes_socket = true, .co = co_self() };

    if (!client->writing) {
        client->writing = true;
        return;
    }
    g_queue_push_tail(&client->outq, &me);
    while (!me.done) {
        co_yield();
    }
}

static void coroutine_fn send_unlock(NbdClient *client)
{
    flush_queue(client);
}

static int coroutine_fn send_simple(NbdClient *client, uint64_t handle,
                                    int err, void *data, size_t len)
{
    uint8_t hdr[16];
    struct iovec iov[2] = { { hdr, 16 }, { data, len } };

    nbd_put32(hdr, NBD_SIMPLE_REPLY_MAGIC);
    nbd_put32(hdr + 4, nbd_errno_from_system(err));
    nbd_put64(hdr + 8, handle);
    return send_iov(client, iov, len ? 2 : 1);
}

static void chunk_header(uint8_t *hdr, uint16_t flags, uint16_t type,
                         uint64_t handle, uint32_t length)
{
    nbd_put32(hdr, NBD_STRUCTURED_REPLY_MAGIC);
    nbd_put16(hdr + 4, flags);
    nbd_put16(hdr + 6, type);
    nbd_put64(hdr + 8, handle);
    nbd_put32(hdr + 16, length);
}

static int coroutine_fn send_structured_error(NbdClient *client,
                                              uint64_t handle, int err,
                                              const char *msg)
{
    uint8_t hdr[20 + 6];
    size_t mlen = msg ? strlen(msg) : 0;
    struct iovec iov[2] = { { hdr, sizeof(hdr) }, { (void *)msg, mlen } };

    chunk_header(hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, handle,
                 6 + mlen);
    nbd_put32(hdr + 20, nbd_errno_from_system(err));
    nbd_put16(hdr + 24, mlen);
    return send_iov(client, iov, mlen ? 2 : 1);
}

static int coroutine_fn send_done(NbdClient *client, uint64_t handle)
{
    uint8_t hdr[20];
    struct iovec iov = { hdr, 20 };

    chunk_header(hdr, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, handle, 0);
    return send_iov(client, &iov, 1);
}

/* Success without payload, or the error (with a message if structured). */
static int coroutine_fn send_generic(NbdClient *client, uint64_t handle,
                                     int ret, const char *msg)
{
    if (client->structured_reply && ret < 0) {
        return send_structured_error(client, handle, -ret, msg);
    }
    return send_simple(client, handle, ret < 0 ? -ret : 0, NULL, 0);
}

static int coroutine_fn send_data_chunk(NbdClient *client, uint64_t handle,
                                        uint64_t offset, void *data,
                                        uint32_t len, bool final)
{
    uint8_t hdr[28];
    struct iovec iov[2] = { { hdr, 28 }, { data, len } };

    chunk_header(hdr, final ? NBD_REPLY_FLAG_DONE : 0,
                 NBD_REPLY_TYPE_OFFSET_DATA, handle, 8 + len);
    nbd_put64(hdr + 20, offset);
    return send_iov(client, iov, 2);
}

static int coroutine_fn send_hole_chunk(NbdClient *client, uint64_t handle,
                                        uint64_t offset, uint32_t len,
                                        bool final)
{
    uint8_t hdr[32];
    struct iovec iov = { hdr, 32 };

    chunk_header(hdr, final ? NBD_REPLY_FLAG_DONE : 0,
                 NBD_REPLY_TYPE_OFFSET_HOLE, handle, 12);
    nbd_put64(hdr + 20, offset);
    nbd_put32(hdr + 28, len);
    return send_iov(client, &iov, 1);
}

static int coroutine_fn export_read(NbdExport *exp, uint64_t offset,
                                    uint32_t len, void *buf)
{
    IOVec qiov;
    iovec_init_buf(&qiov, buf, len);
    int ret = blk_co_preadv(exp->blk, offset, len, &qiov, 0);
    iovec_destroy(&qiov);
    return ret;
}

/*
 * Below this a data chunk is copied as usual: the socket is not worth
 * holding for it, and the small random reads gain more from batching.
 */
#define SPLICE_MIN (64 * 1024)

/*
 * A data chunk whose payload goes from the page cache into the socket
 * without a copy in our memory (block/splice.c), the socket held
 * meanwhile so that nothing comes between header and payload.  A part
 * that can no longer go that way when its turn comes (evicted from the
 * page cache meanwhile) is read into buf and written as usual; the header
 * is out by then, so a failed read ends the connection.
 */
static int coroutine_fn send_data_spliced(NbdClient *client, uint64_t handle,
                                          uint64_t offset, uint8_t *buf,
                                          uint32_t len, bool final)
{
    uint8_t hdr[28];
    struct iovec iov = { hdr, 28 };
    int fd = nbd_channel_fd(client->ch);
    uint32_t done = 0;
    int ret;

    chunk_header(hdr, final ? NBD_REPLY_FLAG_DONE : 0,
                 NBD_REPLY_TYPE_OFFSET_DATA, handle, 8 + len);
    nbd_put64(hdr + 20, offset);
    send_lock(client);
    ret = nbd_channel_writev(client->ch, &iov, 1);
    while (ret >= 0 && done < len) {
        int n = blk_co_splice_read(client->exp->blk, offset + done,
                                   len - done, fd);
        if (n > 0) {
            done += n;
        } else if (n == -EAGAIN) {
            ret = nbd_channel_wait_writable(client->ch);
        } else if (n < 0) {
            ret = -EIO;
        } else {
            ret = export_read(client->exp, offset + done, len - done,
                              buf + done);
            if (ret >= 0) {
                iov = (struct iovec){ buf + done, len - done };
                ret = nbd_channel_writev(client->ch, &iov, 1);
                done = len;
            }
        }
    }
    send_unlock(client);
    /* A short payload would leave the stream out of step: hang up. */
    return ret < 0 ? -EIO : 0;
}

/* ---- Commands ---- */

/*
 * A structured read sends holes as holes: the chain's block status splits
 * the range, zero parts become OFFSET_HOLE chunks, the rest is read.
 */
static int coroutine_fn sparse_read(NbdClient *client, NbdRequest *req,
                                    uint8_t *buf)
{
    NbdExport *exp = client->exp;
    uint32_t done = 0;

    while (done < req->len) {
        int64_t pnum = 0;
        uint64_t off = req->from + done;
        int st = node_co_block_status_above(blk_node(exp->blk), NULL, false,
                                            true, off, req->len - done,
                                            &pnum, NULL, NULL, NULL);
        if (st < 0) {
            g_autofree char *msg =
                g_strdup_printf("unable to check for holes: %s",
                                g_strerror(-st));
            return send_structured_error(client, req->handle, -st, msg);
        }
        if (pnum <= 0 || pnum > req->len - done) {
            pnum = req->len - done;
            st = 0;
        }
        int64_t nsplice = 0;
        if (!(st & BLOCK_ZERO) && pnum >= SPLICE_MIN &&
            client->may_sendfile && blk_may_splice(exp->blk)) {
            nsplice = blk_co_splice_read(exp->blk, off, pnum, -1);
            if (nsplice >= SPLICE_MIN) {
                pnum = nsplice;
            }
        }
        bool final = done + pnum == req->len;
        int ret;
        if (st & BLOCK_ZERO) {
            ret = send_hole_chunk(client, req->handle, off, pnum, final);
        } else if (nsplice >= SPLICE_MIN) {
            ret = send_data_spliced(client, req->handle, off, buf + done,
                                    pnum, final);
        } else {
            ret = export_read(exp, off, pnum, buf + done);
            if (ret < 0) {
                /* QEMU drops the client here; an error chunk is kinder. */
                return send_structured_error(client, req->handle, -ret,
                                             "reading from file failed");
            }
            ret = send_data_chunk(client, req->handle, off, buf + done, pnum,
                                  final);
        }
        if (ret < 0) {
            return ret;
        }
        done += pnum;
    }
    return 0;
}

static int coroutine_fn do_read(NbdClient *client, NbdRequest *req)
{
    NbdExport *exp = client->exp;
    uint8_t *buf = nbd_buf_get(req->len);
    int ret;

    if (client->structured_reply && !(req->flags & NBD_CMD_FLAG_DF) &&
        req->len) {
        ret = sparse_read(client, req, buf);
    } else {
        ret = req->len ? export_read(exp, req->from, req->len, buf) : 0;
        if (ret < 0) {
            ret = send_generic(client, req->handle, ret,
                               "reading from file failed");
        } else if (client->structured_reply) {
            ret = req->len ? send_data_chunk(client, req->handle, req->from,
                                             buf, req->len, true)
                           : send_done(client, req->handle);
        } else {
            ret = send_simple(client, req->handle, 0, buf, req->len);
        }
    }
    nbd_buf_put(buf, req->len);
    return ret;
}

/* CACHE: read the range so that the layers below hold it; data dropped. */
static int coroutine_fn do_cache(NbdClient *client, NbdRequest *req)
{
    const uint32_t step = 1024 * 1024;
    uint32_t bufsize = MIN(req->len, step);
    uint8_t *buf = nbd_buf_get(bufsize);
    int ret = 0;

    for (uint32_t done = 0; done < req->len && ret >= 0; done += step) {
        ret = export_read(client->exp, req->from + done,
                          MIN(step, req->len - done), buf);
    }
    nbd_buf_put(buf, bufsize);
    return send_generic(client, req->handle, ret, "caching data failed");
}

typedef struct {
    uint32_t *ext;          /* length, flags pairs in host order */
    unsigned count, max, alloc;
} Extents;

/* Append an extent, merging it with the last when the flags match. */
static bool extents_add(Extents *e, uint64_t len, uint32_t flags)
{
    if (!len) {
        return true;
    }
    if (e->count && e->ext[2 * e->count - 1] == flags &&
        e->ext[2 * e->count - 2] + len <= UINT32_MAX) {
        e->ext[2 * e->count - 2] += len;
        return true;
    }
    if (e->count == e->max) {
        return false;
    }
    if (e->count == e->alloc) {
        /* Most replies have a handful of extents: grow as needed. */
        e->alloc = MIN(MAX(e->alloc * 2, 16u), e->max);
        e->ext = g_renew(uint32_t, e->ext, 2 * (size_t)e->alloc);
    }
    e->ext[2 * e->count] = len;
    e->ext[2 * e->count + 1] = flags;
    e->count++;
    return true;
}

static int coroutine_fn collect_extents(NbdExport *exp, uint32_t context,
                                        uint64_t offset, uint64_t bytes,
                                        Extents *e)
{
    BlockNode *bs = blk_node(exp->blk);

    while (bytes) {
        int64_t pnum = 0;
        int depth = 0;
        uint32_t flags;
        /* allocation-depth asks without zero detection, as QEMU does. */
        bool base = context == NBD_META_ID_BASE_ALLOCATION;
        int st = node_co_block_status_above(bs, NULL, false, base, offset,
                                            bytes, &pnum, NULL, NULL, &depth);
        if (st < 0) {
            return st;
        }
        if (pnum <= 0) {
            return -EIO;
        }
        if (pnum > (int64_t)bytes) {
            pnum = bytes;
        }
        if (base) {
            flags = (st & BLOCK_DATA ? 0 : NBD_STATE_HOLE) |
                    (st & BLOCK_ZERO ? NBD_STATE_ZERO : 0);
        } else {
            flags = st & BLOCK_ALLOCATED ? depth : 0;
        }
        if (!extents_add(e, pnum, flags)) {
            return 0;
        }
        offset += pnum;
        bytes -= pnum;
    }
    return 0;
}

/*
 * A dirty bitmap's extents, as QEMU's bitmap_to_extents(): clean and dirty
 * runs found by the bitmap's next-dirty/next-clean searches (a few steps
 * per run, however large the disk), dirty runs cut at INT32_MAX bytes
 * before merging, and the clean rest up to the end unless the reply is
 * full.
 */
static void bitmap_extents(const DirtyBitmap *bm, uint64_t offset,
                           uint64_t bytes, Extents *e)
{
    int64_t start = offset, end = offset + bytes;
    int64_t limit = MIN(end, dirty_bitmap_size(bm));

    while (start < limit) {
        int64_t dirty = dirty_bitmap_next_dirty(bm, start, limit - start);
        if (dirty < 0) {
            break;
        }
        int64_t stop = dirty + MIN(limit - dirty, (int64_t)INT32_MAX);
        int64_t clean = dirty_bitmap_next_clean(bm, dirty, stop - dirty);
        if (clean >= 0) {
            stop = clean;
        }
        if (!extents_add(e, dirty - start, 0) ||
            !extents_add(e, stop - dirty, NBD_STATE_DIRTY)) {
            return;
        }
        start = stop;
    }
    extents_add(e, end - start, 0);
}

static int coroutine_fn send_block_status(NbdClient *client, NbdRequest *req,
                                          uint32_t context, bool last)
{
    Extents e = {
        .max = req->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : NBD_MAX_EXTENTS,
    };
    int ret = 0;

    if (context >= NBD_META_ID_DIRTY_BITMAP) {
        bitmap_extents(client->exp->bitmaps[context -
                                            NBD_META_ID_DIRTY_BITMAP],
                       req->from, req->len, &e);
    } else {
        ret = collect_extents(client->exp, context, req->from, req->len, &e);
    }
    if (ret < 0) {
        g_free(e.ext);
        return send_structured_error(client, req->handle, -ret,
                                     "can't get block status");
    }
    for (unsigned i = 0; i < 2 * e.count; i++) {
        uint8_t *p = (uint8_t *)&e.ext[i];
        nbd_put32(p, e.ext[i]);
    }
    uint8_t hdr[24];
    struct iovec iov[2] = {
        { hdr, 24 }, { e.ext, (size_t)e.count * 8 },
    };
    chunk_header(hdr, last ? NBD_REPLY_FLAG_DONE : 0,
                 NBD_REPLY_TYPE_BLOCK_STATUS, req->handle, 4 + e.count * 8);
    nbd_put32(hdr + 20, context);
    ret = send_iov(client, iov, 2);
    g_free(e.ext);
    return ret;
}

static int coroutine_fn do_block_status(NbdClient *client, NbdRequest *req)
{
    NbdMeta *meta = &client->meta;

    if (!req->len) {
        return send_generic(client, req->handle, -EINVAL,
                            "need non-zero length");
    }
    if (!meta->count) {
        return send_generic(client, req->handle, -EINVAL,
                            "CMD_BLOCK_STATUS not negotiated");
    }
    unsigned left = meta->count;
    int ret = 0;
    if (meta->base_allocation) {
        ret = send_block_status(client, req, NBD_META_ID_BASE_ALLOCATION,
                                !--left);
    }
    if (ret >= 0 && meta->allocation_depth) {
        ret = send_block_status(client, req, NBD_META_ID_ALLOCATION_DEPTH,
                                !--left);
    }
    for (size_t i = 0; ret >= 0 && i < client->exp->nr_bitmaps; i++) {
        if (meta->bitmaps[i]) {
            ret = send_block_status(client, req, NBD_META_ID_DIRTY_BITMAP + i,
                                    !--left);
        }
    }
    return ret;
}

/* Serve one valid request; negative only when the reply could not be sent. */
static int coroutine_fn handle_request(NbdClient *client, NbdRequest *req)
{
    NbdExport *exp = client->exp;
    IOVec qiov;
    int flags = 0, ret;

    switch (req->type) {
    case NBD_CMD_READ:
        return do_read(client, req);
    case NBD_CMD_CACHE:
        return do_cache(client, req);
    case NBD_CMD_WRITE:
        if (req->flags & NBD_CMD_FLAG_FUA) {
            flags |= REQ_FUA;
        }
        iovec_init_buf(&qiov, req->data, req->len);
        ret = req->len ? blk_co_pwritev(exp->blk, req->from, req->len, &qiov,
                                        flags) : 0;
        iovec_destroy(&qiov);
        return send_generic(client, req->handle, ret,
                            "writing to file failed");
    case NBD_CMD_WRITE_ZEROES:
        if (req->flags & NBD_CMD_FLAG_FUA) {
            flags |= REQ_FUA;
        }
        if (!(req->flags & NBD_CMD_FLAG_NO_HOLE)) {
            flags |= REQ_MAY_UNMAP;
        }
        if (req->flags & NBD_CMD_FLAG_FAST_ZERO) {
            flags |= REQ_NO_FALLBACK;
        }
        ret = req->len ? blk_co_pwrite_zeroes(exp->blk, req->from, req->len,
                                              flags) : 0;
        return send_generic(client, req->handle, ret,
                            "writing to file failed");
    case NBD_CMD_FLUSH:
        ret = blk_co_flush(exp->blk);
        return send_generic(client, req->handle, ret, "flush failed");
    case NBD_CMD_TRIM:
        ret = req->len ? blk_co_pdiscard(exp->blk, req->from, req->len) : 0;
        if (ret >= 0 && (req->flags & NBD_CMD_FLAG_FUA)) {
            ret = blk_co_flush(exp->blk);
        }
        return send_generic(client, req->handle, ret, "discard failed");
    case NBD_CMD_BLOCK_STATUS:
        return do_block_status(client, req);
    default: {
        g_autofree char *msg =
            g_strdup_printf("invalid request type (%u) received", req->type);
        return send_generic(client, req->handle, -EINVAL, msg);
    }
    }
}

static void request_free(NbdRequest *req)
{
    nbd_buf_put(req->data, req->len);
    g_free(req->error);
    g_free(req);
}

static void coroutine_fn request_co(void *opaque)
{
    NbdRequest *req = opaque;
    NbdClient *client = req->client;
    int ret;

    if (req->error) {
        ret = send_generic(client, req->handle, -EINVAL, req->error);
    } else {
        ret = handle_request(client, req);
    }
    if (ret < 0 || req->incomplete) {
        nbd_client_close(client);
    }
    request_free(req);
    nbd_channel_request_end(client->ch);
    client->inflight--;
    co_queue_next(&client->inflight_slots);
    nbd_client_unref(client);
}

/* QEMU's checks, in its order, on a request whose payload has been read. */
static void validate(NbdClient *client, NbdRequest *req)
{
    NbdExport *exp = client->exp;

    if ((exp->flags & NBD_FLAG_READ_ONLY) &&
        (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES ||
         req->type == NBD_CMD_TRIM)) {
        req->error = g_strdup("Export is read-only");
        return;
    }
    if (req->from > exp->size || req->len > exp->size - req->from) {
        req->error = g_strdup_printf("operation past EOF; From: %" PRIu64
                                     ", Len: %" PRIu32 ", Size: %" PRIu64,
                                     req->from, req->len, exp->size);
        return;
    }
    uint16_t valid = NBD_CMD_FLAG_FUA;
    if (req->type == NBD_CMD_READ && client->structured_reply) {
        valid |= NBD_CMD_FLAG_DF;
    } else if (req->type == NBD_CMD_WRITE_ZEROES) {
        valid |= NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO;
    } else if (req->type == NBD_CMD_BLOCK_STATUS) {
        valid |= NBD_CMD_FLAG_REQ_ONE;
    }
    if (req->flags & ~valid) {
        req->error = g_strdup_printf("unsupported flags for command %s "
                                     "(got 0x%x)", nbd_cmd_name(req->type),
                                     req->flags);
    }
}

/*
 * Read one request (and a write's payload).  NULL: the connection ends
 * (end of file, I/O error, bad magic; or NBD_CMD_DISC, then *polite).
 */
static NbdRequest *coroutine_fn receive_request(NbdClient *client,
                                                bool *polite)
{
    uint8_t hdr[NBD_REQUEST_SIZE];

    if (nbd_channel_read(client->ch, hdr, sizeof(hdr)) != 1) {
        return NULL;
    }
    NbdRequest *req = g_new0(NbdRequest, 1);
    req->client = client;
    req->flags = nbd_get16(hdr + 4);
    req->type = nbd_get16(hdr + 6);
    req->handle = nbd_get64(hdr + 8);
    req->from = nbd_get64(hdr + 16);
    req->len = nbd_get32(hdr + 24);

    uint32_t magic = nbd_get32(hdr);
    if (magic != NBD_REQUEST_MAGIC) {
        /* The stream is lost: an error reply (as QEMU), then hang up. */
        req->error = g_strdup_printf("invalid magic (got 0x%" PRIx32 ")",
                                     magic);
        req->incomplete = true;
        return req;
    }
    if (req->type == NBD_CMD_DISC) {
        *polite = true;
        g_free(req);
        return NULL;
    }
    if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE ||
         req->type == NBD_CMD_CACHE) && req->len > NBD_MAX_BUFFER_SIZE) {
        req->error = g_strdup_printf("len (%" PRIu32 " ) is larger than "
                                     "max len (%u)", req->len,
                                     NBD_MAX_BUFFER_SIZE);
        /* An oversized write's payload is not read: we cannot go on. */
        req->incomplete = req->type == NBD_CMD_WRITE;
        return req;
    }
    if (req->type == NBD_CMD_WRITE && req->len) {
        req->data = nbd_buf_get(req->len);
        if (nbd_channel_read(client->ch, req->data, req->len) != 1) {
            request_free(req);
            return NULL;
        }
    }
    validate(client, req);
    return req;
}

void coroutine_fn nbd_transmit(NbdClient *client)
{
    bool drain = false;
    struct sigaction sa;

    client->may_sendfile = sigaction(SIGPIPE, NULL, &sa) == 0 &&
                           sa.sa_handler == SIG_IGN;

    while (!nbd_client_closing(client)) {
        while (client->inflight >= NBD_MAX_INFLIGHT &&
               !nbd_client_closing(client)) {
            co_queue_wait(&client->inflight_slots);
        }
        if (nbd_client_closing(client)) {
            break;
        }
        NbdRequest *req = receive_request(client, &drain);
        if (!req) {
            break;
        }
        drain = req->incomplete;
        nbd_channel_request_begin(client->ch);
        client->inflight++;
        nbd_client_ref(client);
        co_enter(co_create(request_co, req));
        if (drain) {
            break;
        }
    }
    /*
     * A client that said goodbye, or whose last request we could not read
     * whole, still gets the replies to what it sent before.
     */
    while (drain && client->inflight && !nbd_client_closing(client)) {
        co_queue_wait(&client->inflight_slots);
    }
}
