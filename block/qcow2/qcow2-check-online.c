/*
 * The check of a qcow2 node in use (strata/check-online.h): a copy of the
 * metadata taken under a short drain, checked by the offline check.
 *
 * The copy follows the image's pointers the way the check does, from the
 * header down, and takes every cluster a pointer names (as far as the
 * file goes), damaged pointers included: the check on the copy then reads
 * exactly what it would read in the file at the moment of the copy, so
 * its report on a damaged image is the offline check's.  Clusters the
 * copy leaves out (data) read as zeroes in the copy; the check never
 * reads them.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "strata/check-online.h"
#include "strata/loop.h"
#include "qcow2.h"

/* QEMU's limit on the bitmap directory. */
#define BITMAP_DIR_MAX (64u * 1024 * 1024)
/* Metadata is read in runs of contiguous clusters of at most this much. */
#define COPY_RUN_MAX (1u << 20)

typedef struct MetaCopy {
    BlockChild *file;
    int fd;                      /* the copy: sparse, the file's length */
    int64_t file_len;
    unsigned cluster_bits;
    uint64_t cluster_size;
    uint8_t *done;               /* one bit per cluster of the file */
    uint64_t bytes;              /* copied so far */
} MetaCopy;

static bool copied(const MetaCopy *m, uint64_t k)
{
    return m->done[k >> 3] & (1u << (k & 7));
}

/* Copy the clusters of [offset, offset + len) that lie in the file. */
static int coroutine_fn copy_range(MetaCopy *m, uint64_t offset, uint64_t len)
{
    uint64_t end, k, last, run_max = MAX(COPY_RUN_MAX >> m->cluster_bits, 1);

    if (!len || offset >= (uint64_t)m->file_len) {
        return 0;
    }
    end = len > (uint64_t)m->file_len - offset ? (uint64_t)m->file_len
                                               : offset + len;
    last = (end - 1) >> m->cluster_bits;
    for (k = offset >> m->cluster_bits; k <= last;) {
        if (copied(m, k)) {
            k++;
            continue;
        }
        uint64_t n = 1;
        while (k + n <= last && n < run_max && !copied(m, k + n)) {
            n++;
        }
        uint64_t start = k << m->cluster_bits;
        uint64_t stop = MIN((k + n) << m->cluster_bits,
                            (uint64_t)m->file_len);
        uint8_t *buf = g_try_malloc(stop - start);
        if (!buf) {
            return -ENOMEM;
        }
        int ret = child_co_pread(m->file, (int64_t)start,
                                 (int64_t)(stop - start), buf, 0);
        if (ret >= 0 && pwrite(m->fd, buf, stop - start, (off_t)start) !=
                        (ssize_t)(stop - start)) {
            ret = -errno;
        }
        g_free(buf);
        if (ret < 0) {
            return ret;
        }
        for (uint64_t i = k; i < k + n; i++) {
            m->done[i >> 3] |= 1u << (i & 7);
        }
        m->bytes += stop - start;
        k += n;
    }
    return 0;
}

/*
 * Copy [offset, offset + len) and read it back from the copy (zeroes
 * past the end of the file).  *out: g_free() it.
 */
static int coroutine_fn copy_read(MetaCopy *m, uint64_t offset, uint64_t len,
                                  uint8_t **out)
{
    uint8_t *buf = g_try_malloc0(MAX(len, 1));
    int ret;

    *out = NULL;
    if (!buf) {
        return -ENOMEM;
    }
    ret = copy_range(m, offset, len);
    if (ret >= 0 && offset < (uint64_t)m->file_len) {
        uint64_t n = MIN(len, (uint64_t)m->file_len - offset);
        if (pread(m->fd, buf, n, (off_t)offset) < 0) {
            ret = -errno;
        }
    }
    if (ret < 0) {
        g_free(buf);
        return ret;
    }
    *out = buf;
    return 0;
}

/* An L1 table and the L2 tables it names. */
static int coroutine_fn copy_l1(MetaCopy *m, uint64_t l1_offset,
                                uint64_t l1_size)
{
    uint8_t *l1;
    int ret;

    if (!l1_size || l1_size > QCOW2_MAX_L1_BYTES / 8 ||
        l1_offset > (uint64_t)INT64_MAX) {
        return 0;                /* the check reports it, reading nothing */
    }
    ret = copy_read(m, l1_offset, l1_size * 8, &l1);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < l1_size && ret >= 0; i++) {
        uint64_t e;
        memcpy(&e, l1 + i * 8, 8);
        uint64_t l2 = be64toh(e) & L1E_OFFSET_MASK;
        if (l2) {
            ret = copy_range(m, l2, m->cluster_size);
        }
    }
    g_free(l1);
    return ret;
}

/* The snapshot table and each snapshot's L1 and L2 tables. */
static int coroutine_fn copy_snapshots(MetaCopy *m, uint64_t offset,
                                       uint32_t nb)
{
    if (nb > QCOW2_MAX_SNAPSHOTS || (offset & (m->cluster_size - 1))) {
        return 0;
    }
    for (uint32_t i = 0; i < nb; i++) {
        Qcow2DiskSnapshot sn;
        uint8_t *p;
        int ret;

        if (offset >= (uint64_t)m->file_len) {
            return 0;
        }
        ret = copy_read(m, offset, sizeof(sn), &p);
        if (ret < 0) {
            return ret;
        }
        memcpy(&sn, p, sizeof(sn));
        g_free(p);
        uint64_t len = sizeof(sn) + be32toh(sn.extra_data_size) +
                       be16toh(sn.id_str_size) + be16toh(sn.name_size);
        len = ROUND_UP(len, 8);
        ret = copy_range(m, offset, len);
        if (ret >= 0 &&
            !(be64toh(sn.l1_table_offset) & (m->cluster_size - 1))) {
            ret = copy_l1(m, be64toh(sn.l1_table_offset), be32toh(sn.l1_size));
        }
        if (ret < 0) {
            return ret;
        }
        offset += len;
    }
    return 0;
}

/* The refcount table and the refcount blocks it names. */
static int coroutine_fn copy_refcounts(MetaCopy *m, uint64_t offset,
                                       uint32_t clusters)
{
    uint64_t bytes = (uint64_t)clusters << m->cluster_bits;
    uint8_t *rt;
    int ret;

    if (!bytes || bytes > QCOW2_MAX_REFTABLE_BYTES) {
        return 0;
    }
    ret = copy_read(m, offset, bytes, &rt);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t i = 0; i < bytes / 8 && ret >= 0; i++) {
        uint64_t e;
        memcpy(&e, rt + i * 8, 8);
        uint64_t rb = be64toh(e) & REFT_OFFSET_MASK;
        if (rb) {
            ret = copy_range(m, rb, m->cluster_size);
        }
    }
    g_free(rt);
    return ret;
}

/* The bitmap directory and every bitmap's table (not the bitmaps' data). */
static int coroutine_fn copy_bitmaps(MetaCopy *m, const Qcow2BitmapsExt *ext)
{
    uint64_t dir_offset = be64toh(ext->bitmap_directory_offset);
    uint64_t dir_size = be64toh(ext->bitmap_directory_size);
    uint8_t *dir;
    int ret;

    if (!dir_size || dir_size > BITMAP_DIR_MAX) {
        return 0;
    }
    ret = copy_read(m, dir_offset, dir_size, &dir);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t pos = 0; pos + 24 <= dir_size && ret >= 0;) {
        uint64_t table_offset;
        uint32_t table_size, extra;
        uint16_t name_size;
        memcpy(&table_offset, dir + pos, 8);
        memcpy(&table_size, dir + pos + 8, 4);
        memcpy(&name_size, dir + pos + 18, 2);
        memcpy(&extra, dir + pos + 20, 4);
        ret = copy_range(m, be64toh(table_offset) & L1E_OFFSET_MASK,
                         (uint64_t)be32toh(table_size) * 8);
        pos += ROUND_UP(24 + (uint64_t)be32toh(extra) + be16toh(name_size),
                        8);
    }
    g_free(dir);
    return ret;
}

/* The header's extensions: the bitmap directory's place. */
static int coroutine_fn copy_extensions(MetaCopy *m, uint64_t start)
{
    uint8_t *hdr;
    int ret = copy_read(m, 0, m->cluster_size, &hdr);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t pos = start; pos + 8 <= m->cluster_size;) {
        Qcow2ExtHeader e;
        memcpy(&e, hdr + pos, sizeof(e));
        uint32_t magic = be32toh(e.magic), len = be32toh(e.len);
        if (magic == QCOW2_EXT_END || len > m->cluster_size - pos - 8) {
            break;
        }
        if (magic == QCOW2_EXT_BITMAPS && len >= sizeof(Qcow2BitmapsExt)) {
            Qcow2BitmapsExt b;
            memcpy(&b, hdr + pos + 8, sizeof(b));
            ret = copy_bitmaps(m, &b);
            if (ret < 0) {
                break;
            }
        }
        pos += 8 + ROUND_UP((uint64_t)len, 8);
    }
    g_free(hdr);
    return ret;
}

/*
 * Copy the metadata of the (drained, flushed) image into m->fd.  Images
 * the copy cannot stand for are refused with a message.
 */
static int coroutine_fn copy_metadata(MetaCopy *m, GError **errp)
{
    Qcow2DiskHeader h;
    uint64_t incompat = 0, header_len = QCOW2_V2_HEADER_LEN;
    int ret;

    memset(&h, 0, sizeof(h));
    ret = child_co_pread(m->file, 0, MIN((int64_t)sizeof(h), m->file_len),
                         &h, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the qcow2 header");
        return ret;
    }
    uint32_t version = be32toh(h.version);
    m->cluster_bits = be32toh(h.cluster_bits);
    if (be32toh(h.magic) != QCOW2_MAGIC || version < 2 || version > 3 ||
        m->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        m->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "The image header is not one the check can read; "
                   "use strata-img check on the image out of use");
        return -EINVAL;
    }
    m->cluster_size = UINT64_C(1) << m->cluster_bits;
    if (version >= 3) {
        incompat = be64toh(h.incompatible_features);
        header_len = be32toh(h.header_length);
    }
    if (incompat & QCOW2_INCOMPAT_DIRTY) {
        error_setg(errp, "The image's refcounts are not kept up to date "
                   "while it is in use (lazy refcounts): it can only be "
                   "checked out of use");
        return -ENOTSUP;
    }
    if (incompat & QCOW2_INCOMPAT_DATA_FILE) {
        error_setg(errp, "Images with an external data file cannot be "
                   "checked in use");
        return -ENOTSUP;
    }
    if (be32toh(h.crypt_method) != QCOW2_CRYPT_NONE) {
        error_setg(errp, "Encrypted images cannot be checked in use");
        return -ENOTSUP;
    }
    m->done = g_try_malloc0(((uint64_t)m->file_len >> m->cluster_bits) / 8 +
                            2);
    if (!m->done) {
        error_setg(errp, "Not enough memory for the check");
        return -ENOMEM;
    }
    ret = copy_range(m, 0, m->cluster_size);
    if (ret >= 0 && be32toh(h.backing_file_size) <= QCOW2_MAX_BACKING_NAME) {
        ret = copy_range(m, be64toh(h.backing_file_offset),
                         be32toh(h.backing_file_size));
    }
    if (ret >= 0) {
        ret = copy_extensions(m, header_len);
    }
    if (ret >= 0) {
        ret = copy_l1(m, be64toh(h.l1_table_offset), be32toh(h.l1_size));
    }
    if (ret >= 0) {
        ret = copy_refcounts(m, be64toh(h.refcount_table_offset),
                             be32toh(h.refcount_table_clusters));
    }
    if (ret >= 0) {
        ret = copy_snapshots(m, be64toh(h.snapshots_offset),
                             be32toh(h.nb_snapshots));
    }
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not copy the image's metadata");
    }
    return ret;
}

/*
 * The metadata caches written to the file (not synced to the disk: the
 * copy reads through the same file, and a sync would only make the guest
 * wait longer).
 */
static int coroutine_fn write_back(BlockNode *bs, GError **errp)
{
    int ret = bs->drv->co_flush_to_os && !bs->read_only
              ? bs->drv->co_flush_to_os(bs) : 0;
    if (ret == -ENOMEDIUM) {
        /* The driver marked the image corrupt and writes nothing more. */
        error_setg(errp, "The image is marked corrupt and its cached "
                   "metadata cannot be written back: check it out of use");
    } else if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not write back the image's "
                         "metadata");
    }
    return ret;
}

/* Drain, write back, copy, undrain: the only time the guest waits. */
static int coroutine_fn snapshot_metadata(BlockNode *bs, MetaCopy *m,
                                          OnlineCheckStats *stats,
                                          GError **errp)
{
    int64_t t0 = clock_ns();
    int ret;

    node_drain_begin(bs);
    ret = write_back(bs, errp);
    if (ret < 0) {
        goto out;
    }
    node_invalidate_length(m->file->bs);
    m->file_len = node_getlength(m->file->bs);
    if (m->file_len < 0) {
        ret = (int)m->file_len;
        error_setg_errno(errp, -ret, "Could not get the image file's length");
        goto out;
    }
    if (ftruncate(m->fd, m->file_len) < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "Could not size the metadata copy");
        goto out;
    }
    ret = copy_metadata(m, errp);
out:
    node_drain_end(bs);
    stats->pause_ns = clock_ns() - t0;
    stats->metadata_bytes = (int64_t)m->bytes;
    return ret;
}

int coroutine_fn node_co_check_online(BlockNode *bs, BlockCheckResult *res,
                                      OnlineCheckStats *stats,
                                      NodeCheckReport *report,
                                      void (*progress)(void *opaque,
                                                       uint64_t done,
                                                       uint64_t total),
                                      void *opaque, GError **errp)
{
    MetaCopy m = { .fd = -1 };
    BlockNode *copy = NULL;
    int ret;

    memset(res, 0, sizeof(*res));
    memset(stats, 0, sizeof(*stats));
    if (!bs->drv || strcmp(bs->drv->format_name, "qcow2") || !bs->file) {
        error_setg(errp, "Node '%s' is not a qcow2 node: only qcow2 images "
                   "can be checked in use", node_get_name(bs));
        return -ENOTSUP;
    }
    m.file = bs->file;
    /* Most of what the caches hold is written back before the drain. */
    ret = write_back(bs, errp);
    if (ret < 0) {
        return ret;
    }
    m.fd = memfd_create("strata-check", MFD_CLOEXEC);
    if (m.fd < 0) {
        ret = -errno;
        error_setg_errno(errp, errno, "Could not create the metadata copy");
        return ret;
    }
    ret = snapshot_metadata(bs, &m, stats, errp);
    if (ret < 0) {
        goto out;
    }
    if (progress) {
        progress(opaque, m.bytes, 2 * m.bytes);
    }

    /* No backing file: the check looks at this image only. */
    char *path = g_strdup_printf("/proc/self/fd/%d", m.fd);
    json_t *opts = json_pack("{s:s, s:{s:s, s:s}}", "driver", "qcow2",
                             "file", "driver", "file", "filename", path);
    g_free(path);
    copy = node_open(NULL, opts, NODE_O_CHECK | NODE_O_NO_BACKING, errp);
    if (!copy) {
        ret = -EIO;
        goto out;
    }
    /*
     * What the check finds is its result; BLOCK_IMAGE_CORRUPTED (and a
     * warning in the log) naming the copy, a transient node no client
     * knows, would only mislead.  The copy is read-only, so no signal
     * is fatal, and this mutes them all.
     */
    ((Qcow2State *)copy->opaque)->signaled_corruption = true;
    ret = node_check(copy, res, 0, report, opaque);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Check failed");
        goto out;
    }
    if (progress) {
        progress(opaque, 2 * m.bytes, 2 * m.bytes);
    }
out:
    if (copy) {
        node_unref(copy);
    }
    g_free(m.done);
    close(m.fd);
    return ret;
}
