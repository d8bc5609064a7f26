/*
 * Device state streams inside a VM state area (vmstate-devices.h).
 *
 * After the RAM part of the state (vmstate-ram.c), one section per stream
 * of the registry (x-strata-device-state-add), in registration order,
 * back to back, big-endian:
 *
 *   u32 magic "SDEV", u16 id length, u8 flags (1: iterative), u8 0, the id
 *   chunks: u32 length (1 .. 1 MiB), that many state bytes
 *   u32 0
 *   u32 CRC-32 (zlib's) of the section from its magic to the 0 included
 *
 * An iterative stream's bytes are the back end's own records and round
 * ends exactly as it wrote them (docs/migration.md "Device state"): a load
 * hands them back unchanged; the chunks do not follow the records.
 *
 * Copies between a back end's descriptor and the area go through one
 * 1 MiB buffer: the back end's side in a pool thread (it waits for a
 * silent back end in poll, so that job-cancel stops it, and never blocks
 * in a read or write), the area's in the job's coroutine.
 * A load checks every section (and its CRC) before guest memory or any
 * back end is touched, then reads the states a second time to hand them
 * back: no state is ever held whole.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "strata/id.h"
#include "strata/iov.h"
#include "strata/loop.h"
#include "vmstate-devices.h"
#include "vmstate-bytes.h"

#define POLL_MS 100
/* a parse reads the states in pieces of this size for the CRCs */
#define CHECK_BUF (256u << 10)

static uint32_t crc_add(uint32_t crc, const void *buf, size_t n)
{
    return (uint32_t)crc32(crc, buf, (uInt)n);
}

/* ---- an iterative stream's records ---- */

void vmstate_records_feed(VmstateRecords *w, const uint8_t *p, size_t n)
{
    while (n) {
        if (w->left) {
            size_t k = MIN(n, (size_t)w->left);
            w->left -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        w->hdr[w->got++] = *p++;
        n--;
        if (w->got == 4) {
            w->got = 0;
            w->left = get_be32(w->hdr);
            if (w->left) {
                w->in_round = true;
            } else {
                /* a 0 right after another is an empty round: allowed */
                w->in_round = false;
                w->rounds++;
            }
        }
    }
}

bool vmstate_records_at_boundary(const VmstateRecords *w)
{
    return w->got == 0 && w->left == 0 && !w->in_round;
}

/* ---- parsing ---- */

static void desc_free(gpointer p)
{
    VmstateDevDesc *d = p;
    g_free(d->id);
    g_free(d);
}

/* Reads n bytes at *pos (which must stay below end), advancing it. */
static bool take(VmstateReadFn *rd, void *opaque, uint64_t *pos,
                 uint64_t end, void *buf, size_t n, const char *what,
                 GError **errp)
{
    if (*pos > end || n > end - *pos) {
        error_setg(errp, "The VM state ends inside %s (truncated?)", what);
        return false;
    }
    int ret = rd(opaque, buf, n, *pos);
    if (ret < 0) {
        error_setg(errp, "Failed to read the VM state: %s",
                   g_strerror(-ret));
        return false;
    }
    *pos += n;
    return true;
}

/* The set's streams by id. */
static GHashTable *stream_index(DsSet *set)
{
    GHashTable *h = g_hash_table_new(g_str_hash, g_str_equal);
    for (unsigned k = 0; set && k < ds_set_count(set); k++) {
        DsStream *st = ds_set_get(set, k);
        g_hash_table_insert(h, st->id, st);
    }
    return h;
}

/*
 * A state with more streams than @backends has: names streams without a
 * back end, walking only the ids (no CRC) of at most as many sections as
 * there are back ends and VMSTATE_DEV_NAMED more.  false (errp not set)
 * if it met anything odd before: the parse, which then fails at the same
 * place at the latest, says what.
 */
static bool refuse_too_many(VmstateReadFn *rd, void *opaque, uint64_t pos,
                            uint64_t end, uint32_t count, DsSet *backends,
                            GError **errp)
{
    g_autoptr(GHashTable) known = stream_index(backends);
    uint32_t max = g_hash_table_size(known);
    g_autoptr(GString) ids = g_string_new(NULL);
    uint32_t walked = 0, named = 0, missing = 0;

    while (walked < count && walked < max + VMSTATE_DEV_NAMED) {
        uint8_t fixed[VMSTATE_DEV_FIXED], id[256], b4[4];
        if (!take(rd, opaque, &pos, end, fixed, sizeof(fixed), "", NULL)) {
            break;
        }
        uint16_t id_len = get_be16(fixed + 4);
        if (get_be32(fixed) != VMSTATE_DEV_MAGIC || id_len == 0 ||
            id_len > DS_ID_MAX ||
            !take(rd, opaque, &pos, end, id, id_len, "", NULL)) {
            break;
        }
        id[id_len] = 0;
        if (strlen((char *)id) != id_len || !id_wellformed((char *)id)) {
            break;
        }
        walked++;
        if (!g_hash_table_contains(known, id)) {
            missing++;
            if (named < VMSTATE_DEV_NAMED) {
                g_string_append_printf(ids, "%s'%s'", named ? ", " : "",
                                       (char *)id);
                named++;
            }
        }
        bool odd = false;
        for (uint32_t len = 1; len && !odd;) {
            odd = !take(rd, opaque, &pos, end, b4, 4, "", NULL);
            len = odd ? 0 : get_be32(b4);
            odd = odd || len > VMSTATE_DEV_CHUNK || pos > end ||
                  len > end - pos;
            pos += odd ? 0 : len;
        }
        if (odd) {
            break;
        }
        pos += 4;                               /* the CRC */
    }
    if (walked < count && walked < max + VMSTATE_DEV_NAMED) {
        return false;
    }
    if (walked == count) {
        /* every id seen: exactly those without a back end */
        if (missing > named) {
            g_string_append_printf(ids, " and %" PRIu32 " more",
                                   missing - named);
        }
        error_setg(errp, "The VM state holds device state %s, and no back "
                   "end is registered for %s (x-strata-device-state-add); "
                   "guest RAM and every back end untouched", ids->str,
                   missing > 1 ? "them" : "it");
        return true;
    }
    /* at least count - max have none; named ones are among them */
    uint32_t more = count - max > named ? count - max - named : 0;
    if (more) {
        g_string_append_printf(ids, "%sat least %" PRIu32 " more",
                               named ? " and " : "", more);
    }
    error_setg(errp, "The VM state holds %" PRIu32 " device states, more "
               "than the %" PRIu32 " back ends registered (x-strata-device-"
               "state-add); none for %s; guest RAM and every back end "
               "untouched", count, max, ids->str);
    return true;
}

static bool cancelled(atomic_bool *cancel, GError **errp)
{
    if (cancel && atomic_load(cancel)) {
        error_setg(errp, "The load was cancelled while it checked the VM "
                   "state's device state");
        return true;
    }
    return false;
}

GPtrArray *vmstate_dev_parse(VmstateReadFn *rd, void *opaque, uint64_t off,
                             uint64_t end, uint32_t count, DsSet *backends,
                             atomic_bool *cancel, GError **errp)
{
    GPtrArray *out = g_ptr_array_new_with_free_func(desc_free);
    /* ids seen (keys owned by out's descs) */
    GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
    uint8_t *buf = NULL;
    uint64_t pos = off;

    if (off > end || count > (end - off) / VMSTATE_DEV_MIN) {
        error_setg(errp, "The VM state's device state is damaged (%" PRIu32
                   " streams in %" PRIu64 " bytes)", count,
                   off > end ? 0 : end - off);
        goto fail;
    }
    if (backends && count > ds_set_count(backends) &&
        refuse_too_many(rd, opaque, off, end, count, backends, errp)) {
        /*
         * Every stream needs a back end of its own: refused before the
         * sections are walked (a damaged or hostile count costs nothing).
         */
        goto fail;
    }
    for (uint32_t i = 0; i < count; i++) {
        uint8_t fixed[VMSTATE_DEV_FIXED], id[256], b4[4];
        char what[300];

        if (cancelled(cancel, errp)) {
            goto fail;
        }
        snprintf(what, sizeof(what), "device state section %" PRIu32, i + 1);
        if (!take(rd, opaque, &pos, end, fixed, sizeof(fixed), what, errp)) {
            goto fail;
        }
        uint16_t id_len = get_be16(fixed + 4);
        if (get_be32(fixed) != VMSTATE_DEV_MAGIC || id_len == 0 ||
            id_len > DS_ID_MAX || (fixed[6] & ~VMSTATE_DEV_ITERATIVE) ||
            fixed[7]) {
            error_setg(errp, "The VM state's device state section %" PRIu32
                       " is damaged (its header)", i + 1);
            goto fail;
        }
        if (!take(rd, opaque, &pos, end, id, id_len, what, errp)) {
            goto fail;
        }
        id[id_len] = 0;
        if (strlen((char *)id) != id_len || !id_wellformed((char *)id)) {
            error_setg(errp, "The VM state's device state section %" PRIu32
                       " is damaged (its id)", i + 1);
            goto fail;
        }
        if (g_hash_table_contains(seen, id)) {
            error_setg(errp, "The VM state has device state '%s' twice",
                       (char *)id);
            goto fail;
        }
        VmstateDevDesc *d = g_new0(VmstateDevDesc, 1);
        d->id = g_strdup((char *)id);
        g_hash_table_add(seen, d->id);
        d->iterative = fixed[6] & VMSTATE_DEV_ITERATIVE;
        d->data = pos;
        g_ptr_array_add(out, d);
        snprintf(what, sizeof(what), "device state '%s'", d->id);

        uint32_t crc = crc_add(crc_add(0, fixed, sizeof(fixed)), id, id_len);
        VmstateRecords rec = { 0 };
        for (;;) {
            if (!take(rd, opaque, &pos, end, b4, 4, what, errp)) {
                goto fail;
            }
            crc = crc_add(crc, b4, 4);
            uint32_t len = get_be32(b4);
            if (len == 0) {
                break;
            }
            if (len > VMSTATE_DEV_CHUNK) {
                error_setg(errp, "The VM state's device state '%s' is damaged "
                           "(a chunk of %" PRIu32 " bytes)", d->id, len);
                goto fail;
            }
            if (pos > end || len > end - pos) {
                error_setg(errp, "The VM state ends inside device state '%s' "
                           "(truncated?)", d->id);
                goto fail;
            }
            if (!buf) {
                buf = g_malloc(CHECK_BUF);
            }
            for (uint32_t done = 0; done < len;) {
                size_t n = MIN(len - done, CHECK_BUF);
                if (cancelled(cancel, errp) || !take(rd, opaque, &pos, end, buf, n, what, errp)) {
                    goto fail;
                }
                crc = crc_add(crc, buf, n);
                if (d->iterative) {
                    vmstate_records_feed(&rec, buf, n);
                }
                done += (uint32_t)n;
            }
            d->bytes += len;
        }
        if (!take(rd, opaque, &pos, end, b4, 4, what, errp)) {
            goto fail;
        }
        if (get_be32(b4) != crc) {
            error_setg(errp, "The VM state's device state '%s' is damaged: "
                       "its CRC-32 is 0x%08" PRIx32 ", the state says 0x%08"
                       PRIx32, d->id, crc, get_be32(b4));
            goto fail;
        }
        if (d->iterative && !vmstate_records_at_boundary(&rec)) {
            error_setg(errp, "The VM state's device state '%s' is damaged: "
                       "it ends inside a round", d->id);
            goto fail;
        }
        d->rounds = rec.rounds;
    }
    if (pos != end) {
        error_setg(errp, "The VM state is damaged: %" PRIu64 " bytes after "
                   "its device state", end - pos);
        goto fail;
    }
    if (backends && count > ds_set_count(backends)) {
        /* refuse_too_many met an oddity the parse did not: not expected */
        error_setg(errp, "The VM state holds %" PRIu32 " device states, more "
                   "than the %u back ends registered", count,
                   ds_set_count(backends));
        goto fail;
    }
    g_free(buf);
    g_hash_table_destroy(seen);
    return out;

fail:
    g_free(buf);
    g_hash_table_destroy(seen);
    g_ptr_array_free(out, true);
    return NULL;
}

/* ---- a back end's descriptor, from a pool thread ---- */

typedef struct FdCopy {
    int fd;
    uint8_t *buf;
    size_t len;                 /* read: room; write: bytes */
    size_t done;
    bool write;
    DsWriter *writer;           /* write: never blocks */
    _Atomic uint64_t *progress; /* write: counts bytes as they go */
    atomic_bool *cancel;
} FdCopy;

/*
 * A read fills the buffer or stops at EOF (done < len); a write writes
 * all.  Polls so that a cancel is seen while the back end is silent, and
 * neither reads nor writes block (a read takes what poll said is there; a
 * write goes through the DsWriter): a back end that stops reading does
 * not hold the job past job-cancel.
 */
static int fd_copy_run(void *opaque)
{
    FdCopy *c = opaque;

    while (c->done < c->len) {
        if (c->cancel && atomic_load(c->cancel)) {
            return -ECANCELED;
        }
        struct pollfd p = { .fd = c->fd,
                            .events = c->write ? POLLOUT : POLLIN };
        int r = poll(&p, 1, POLL_MS);
        if (r < 0 && errno != EINTR) {
            return -errno;
        }
        if (r <= 0) {
            continue;
        }
        ssize_t k = c->write
            ? ds_writer_write(c->writer, c->buf + c->done, c->len - c->done)
            : read(c->fd, c->buf + c->done, c->len - c->done);
        if (k < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (k < 0) {
            return -errno;
        }
        if (k == 0) {
            return c->write ? -EIO : 0;
        }
        c->done += (size_t)k;
        if (c->progress) {
            atomic_fetch_add(c->progress, (uint64_t)k);
        }
    }
    return 0;
}

static int coroutine_fn fd_copy(FdCopy *c)
{
    return thread_pool_co_run(fd_copy_run, c);
}

static int coroutine_fn area_io(BlockNode *bs, bool write, void *buf,
                                size_t len, uint64_t pos)
{
    IOVec v;
    iovec_init_buf(&v, buf, len);
    int ret = write ? node_co_save_vmstate(bs, &v, (int64_t)pos)
                    : node_co_load_vmstate(bs, &v, (int64_t)pos);
    iovec_destroy(&v);
    return ret;
}

/* ---- save ---- */

/* One stream from *pos on; *pos is where it ended. */
static bool coroutine_fn save_one(BlockNode *bs, DsStream *st,
                                  uint64_t *pos, uint8_t *buf,
                                  atomic_bool *cancel, GError **errp)
{
    size_t id_len = strlen(st->id);
    uint8_t head[VMSTATE_DEV_FIXED + 256];
    VmstateRecords rec = { 0 };
    int ret;

    atomic_store(&st->outcome, DS_FAILED);
    /* a larger pipe means fewer wake-ups; the kernel may refuse */
    fcntl(st->fd, F_SETPIPE_SZ, 1 << 20);
    put_be32(head, VMSTATE_DEV_MAGIC);
    put_be16(head + 4, (uint16_t)id_len);
    head[6] = st->iterative ? VMSTATE_DEV_ITERATIVE : 0;
    head[7] = 0;
    memcpy(head + VMSTATE_DEV_FIXED, st->id, id_len);
    uint32_t crc = crc_add(0, head, VMSTATE_DEV_FIXED + id_len);
    ret = area_io(bs, true, head, VMSTATE_DEV_FIXED + id_len, *pos);
    if (ret < 0) {
        goto write_failed;
    }
    *pos += VMSTATE_DEV_FIXED + id_len;

    for (;;) {
        FdCopy c = { .fd = st->fd, .buf = buf + 4, .len = VMSTATE_DEV_CHUNK,
                     .cancel = cancel };
        ret = fd_copy(&c);
        if (ret == -ECANCELED) {
            error_setg(errp, "Device state '%s': the save was cancelled",
                       st->id);
            return false;
        }
        if (ret < 0) {
            error_setg(errp, "Could not read device state '%s': %s", st->id,
                       g_strerror(-ret));
            return false;
        }
        if (st->iterative) {
            vmstate_records_feed(&rec, buf + 4, c.done);
        }
        if (c.done == 0) {
            break;
        }
        put_be32(buf, (uint32_t)c.done);
        crc = crc_add(crc, buf, 4 + c.done);
        ret = area_io(bs, true, buf, 4 + c.done, *pos);
        if (ret < 0) {
            goto write_failed;
        }
        *pos += 4 + c.done;
        atomic_fetch_add(&st->bytes, (uint64_t)c.done);
        if (st->iterative) {
            atomic_store(&st->rounds, (unsigned)rec.rounds);
        }
        if (c.done < c.len) {
            break;                      /* EOF after these bytes */
        }
    }
    if (st->iterative && !vmstate_records_at_boundary(&rec)) {
        error_setg(errp, "Device state '%s': the back end closed its stream "
                   "inside a round", st->id);
        return false;
    }
    uint8_t tail[8];
    put_be32(tail, 0);
    crc = crc_add(crc, tail, 4);
    put_be32(tail + 4, crc);
    ret = area_io(bs, true, tail, sizeof(tail), *pos);
    if (ret < 0) {
        goto write_failed;
    }
    *pos += sizeof(tail);
    atomic_store(&st->outcome, DS_DONE);
    return true;

write_failed:
    error_setg(errp, "Failed to save device state '%s' into the VM state: %s",
               st->id, g_strerror(-ret));
    return false;
}

int64_t coroutine_fn vmstate_dev_save(BlockNode *bs, DsSet *set,
                                      uint64_t pos, atomic_bool *cancel,
                                      GError **errp)
{
    unsigned n = set ? ds_set_count(set) : 0;
    uint8_t *buf;

    if (n == 0) {
        return (int64_t)pos;
    }
    buf = g_malloc(4 + VMSTATE_DEV_CHUNK);
    for (unsigned i = 0; i < n; i++) {
        if (!save_one(bs, ds_set_get(set, i), &pos, buf, cancel, errp)) {
            g_free(buf);
            return -EIO;
        }
    }
    g_free(buf);
    return (int64_t)pos;
}

/* ---- load ---- */

bool vmstate_dev_match(GPtrArray *descs, DsSet *set, GError **errp)
{
    g_autoptr(GHashTable) streams = stream_index(set);
    g_autoptr(GString) missing = g_string_new(NULL);
    unsigned nmissing = 0;

    for (guint i = 0; i < descs->len; i++) {
        VmstateDevDesc *d = descs->pdata[i];
        if (!g_hash_table_contains(streams, d->id)) {
            if (nmissing < VMSTATE_DEV_NAMED) {
                g_string_append_printf(missing, "%s'%s'",
                                       nmissing ? ", " : "", d->id);
            }
            nmissing++;
        }
    }
    if (nmissing > VMSTATE_DEV_NAMED) {
        g_string_append_printf(missing, " and %u more",
                               nmissing - VMSTATE_DEV_NAMED);
    }
    if (nmissing) {
        error_setg(errp, "The VM state holds device state %s, and no back "
                   "end is registered for %s (x-strata-device-state-add); "
                   "guest RAM and every back end untouched", missing->str,
                   nmissing > 1 ? "them" : "it");
        return false;
    }
    return true;
}

void vmstate_dev_mark_absent(GPtrArray *descs, DsSet *set)
{
    g_autoptr(GHashTable) in_state = g_hash_table_new(g_str_hash,
                                                      g_str_equal);

    for (guint i = 0; descs && i < descs->len; i++) {
        g_hash_table_add(in_state, ((VmstateDevDesc *)descs->pdata[i])->id);
    }
    for (unsigned k = 0; set && k < ds_set_count(set); k++) {
        DsStream *st = ds_set_get(set, k);
        if (!g_hash_table_contains(in_state, st->id)) {
            atomic_store(&st->outcome, DS_NOT_IN_FILE);
        }
    }
}

/* What became of the streams when stream @failed broke off. */
static char *load_report(GPtrArray *descs, guint failed, bool partly)
{
    GString *s = g_string_new("the guest RAM is the VM state's");

    if (failed > 0) {
        g_string_append(s, "; handed back: ");
        for (guint i = 0; i < failed; i++) {
            g_string_append_printf(s, "%s'%s'", i ? ", " : "",
                                   ((VmstateDevDesc *)descs->pdata[i])->id);
        }
    }
    g_string_append_printf(s, "; '%s' %s", ((VmstateDevDesc *)
                           descs->pdata[failed])->id,
                           partly ? "only in part (its descriptor closed)"
                                  : "not at all (its descriptor closed)");
    if (failed + 1 < descs->len) {
        g_string_append(s, "; not handed back (still registered): ");
        for (guint i = failed + 1; i < descs->len; i++) {
            g_string_append_printf(s, "%s'%s'", i > failed + 1 ? ", " : "",
                                   ((VmstateDevDesc *)descs->pdata[i])->id);
        }
    }
    return g_string_free(s, false);
}

/* 0 or -errno with errp set. */
static int coroutine_fn load_one(BlockNode *bs, VmstateDevDesc *d,
                                  DsStream *st, uint8_t *buf,
                                  atomic_bool *cancel, bool *partly,
                                  GError **errp)
{
    uint64_t pos = d->data;
    int ret;

    DsWriter w;
    ds_writer_init(&w, st->fd);
    atomic_store(&st->outcome, DS_FAILED);
    *partly = false;
    for (;;) {
        uint8_t b4[4];
        ret = area_io(bs, false, b4, 4, pos);
        if (ret < 0) {
            goto read_failed;
        }
        uint32_t len = get_be32(b4);
        pos += 4;
        if (len == 0) {
            break;
        }
        if (len > VMSTATE_DEV_CHUNK) {
            /* checked by the parse: the area changed since */
            error_setg(errp, "The VM state's device state '%s' changed "
                       "while it was loaded", d->id);
            ret = -EIO;
            goto out;
        }
        ret = area_io(bs, false, buf, len, pos);
        if (ret < 0) {
            goto read_failed;
        }
        pos += len;
        FdCopy c = { .fd = st->fd, .buf = buf, .len = len, .write = true,
                     .writer = &w, .progress = &st->bytes,
                     .cancel = cancel };
        ret = fd_copy(&c);
        *partly |= c.done > 0;
        if (ret == -ECANCELED) {
            error_setg(errp, "Device state '%s': the load was cancelled",
                       d->id);
            goto out;
        }
        if (ret < 0) {
            error_setg(errp, "Could not hand device state '%s' back to its "
                       "back end: %s", d->id, g_strerror(-ret));
            goto out;
        }
    }
    ds_writer_close(&w);
    atomic_store(&st->rounds, (unsigned)d->rounds);
    close(st->fd);
    st->fd = -1;
    atomic_store(&st->outcome, DS_DONE);
    return 0;

read_failed:
    error_setg(errp, "Failed to read device state '%s' from the VM state: %s",
               d->id, g_strerror(-ret));
out:
    ds_writer_close(&w);
    return ret;
}

int coroutine_fn vmstate_dev_load(BlockNode *bs, GPtrArray *descs,
                                  DsSet *set, atomic_bool *cancel,
                                  GError **errp)
{
    uint8_t *buf = descs->len ? g_malloc(VMSTATE_DEV_CHUNK) : NULL;
    g_autoptr(GHashTable) streams = stream_index(set);

    for (guint i = 0; i < descs->len; i++) {
        VmstateDevDesc *d = descs->pdata[i];
        DsStream *st = g_hash_table_lookup(streams, d->id);
        GError *local = NULL;
        bool partly;

        int ret = load_one(bs, d, st, buf, cancel, &partly, &local);
        if (ret < 0) {
            /* a back end left with half a state must not wait for more */
            close(st->fd);
            st->fd = -1;
            g_autofree char *report = load_report(descs, i, partly);
            error_setg(errp, "%s; %s", local->message, report);
            g_error_free(local);
            g_free(buf);
            return ret;
        }
    }
    g_free(buf);
    return 0;
}
