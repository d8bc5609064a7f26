/*
 * The qcow2 header: reading and checking it on open, and writing it back.
 *
 * Checks follow QEMU 7.2's order and messages, so that a damaged image is
 * refused with the same words by both programs.  Values that decide where
 * we read or write (table offsets and sizes) are all checked here, before
 * anything uses them: later code trusts s.
 */
#include <limits.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "qcow2.h"
#include "qcow2-bitmap.h"
#include "strata/block-events.h"

/* The names QEMU 7.2 writes in its feature name table, in this order. */
const Qcow2FeatureName qcow2_feature_table[QCOW2_FEATURE_TABLE_LEN] = {
    { 0, 0, "dirty bit" },
    { 0, 1, "corrupt bit" },
    { 0, 2, "external data file" },
    { 0, 3, "compression type" },
    { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" },
    { 2, 0, "bitmaps" },
    { 2, 1, "raw external data" },
};

static int coroutine_fn pread_file(BlockNode *bs, uint64_t offset,
                                   uint64_t bytes, void *buf)
{
    return child_co_pread(bs->file, (int64_t)offset, (int64_t)bytes, buf, 0);
}

/*
 * A table at `offset` of `entries` entries of `entry_len` bytes, at most
 * `max_bytes`: aligned to a cluster and not wrapping around.
 */
static bool validate_table(Qcow2State *s, uint64_t offset, uint64_t entries,
                           size_t entry_len, uint64_t max_bytes,
                           const char *what, GError **errp)
{
    if (entries > max_bytes / entry_len) {
        error_setg(errp, "%s too large", what);
        return false;
    }
    uint64_t size = entries * entry_len;
    /* The end must fit in 63 bits, as QEMU's int64_t offsets do. */
    if (INT64_MAX - size < offset || qcow2_offset_into_cluster(s, offset)) {
        error_setg(errp, "%s offset invalid", what);
        return false;
    }
    return true;
}

/*
 * As QEMU: the names the image's table gives, in table order (the table
 * ends at the first entry without a name), then whatever bits are left as
 * one hexadecimal mask.
 */
static void report_unsupported(Qcow2State *s, uint64_t mask, GError **errp)
{
    GString *msg = g_string_new("Unsupported qcow2 feature(s): ");
    size_t prefix_len = msg->len;

    for (unsigned i = 0; i < s->n_features && s->feature_table[i].name[0];
         i++) {
        const Qcow2FeatureName *f = &s->feature_table[i];
        if (f->type != 0 || f->bit >= 64 || !(mask & (1ull << f->bit))) {
            continue;
        }
        g_string_append(msg, msg->len > prefix_len ? ", " : "");
        g_string_append_len(msg, f->name, strnlen(f->name, sizeof(f->name)));
        mask &= ~(1ull << f->bit);
    }
    if (mask) {
        g_string_append_printf(msg, "%sUnknown incompatible feature: %" PRIx64,
                               msg->len > prefix_len ? ", " : "", mask);
    }
    error_setg(errp, "%s", msg->str);
    g_string_free(msg, true);
}

/*
 * Header extensions between `start` and `end`.  only_features: the first
 * pass, which wants only the feature name table (for the message about
 * unknown features) and must not fail on anything else.
 */
/* Where the LUKS header lies (it must start on a cluster). */
static int coroutine_fn read_crypto_ext(BlockNode *bs, uint64_t offset,
                                        GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t be[2];
    int ret = pread_file(bs, offset, sizeof(be), be);

    if (ret < 0) {
        error_setg_errno(errp, -ret, "Unable to read CRYPTO header extension");
        return ret;
    }
    s->has_crypto_ext = true;
    s->crypto_header_offset = be64toh(be[0]);
    s->crypto_header_length = be64toh(be[1]);
    if (s->crypto_header_offset % s->cluster_size) {
        error_setg(errp, "Encryption header offset '%" PRIu64 "' is not a "
                   "multiple of cluster size '%" PRIu64 "'",
                   s->crypto_header_offset, s->cluster_size);
        return -EINVAL;
    }
    return 0;
}

static int coroutine_fn read_extensions(BlockNode *bs, uint64_t start,
                                        uint64_t end, bool only_features,
                                        GError **errp)
{
    Qcow2State *s = bs->opaque;
    uint64_t offset = start;
    int ret;

    while (offset < end) {
        Qcow2ExtHeader ext;

        ret = pread_file(bs, offset, sizeof(ext), &ext);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "qcow2_read_extension: ERROR: pread "
                             "fail from offset %" PRIu64, offset);
            return ret;
        }
        ext.magic = be32toh(ext.magic);
        ext.len = be32toh(ext.len);
        offset += sizeof(ext);
        if (offset > end || ext.len > end - offset) {
            error_setg(errp, "Header extension too large");
            return -EINVAL;
        }

        switch (ext.magic) {
        case QCOW2_EXT_END:
            return 0;

        case QCOW2_EXT_FEATURE_TABLE:
            if (only_features) {
                /* a last entry cut short still counts, zero-padded */
                unsigned n = DIV_ROUND_UP(ext.len, sizeof(Qcow2FeatureName));
                g_free(s->feature_table);
                s->feature_table = g_new0(Qcow2FeatureName, MAX(n, 1));
                ret = pread_file(bs, offset, ext.len, s->feature_table);
                if (ret < 0) {
                    error_setg_errno(errp, -ret, "ERROR: ext_feature_table: "
                                     "Could not read table");
                    return ret;
                }
                s->n_features = n;
            }
            break;

        case QCOW2_EXT_BACKING_FORMAT:
            if (only_features) {
                break;
            }
            if (ext.len >= 16) {
                error_setg(errp, "ERROR: ext_backing_format: len=%" PRIu32
                           " too large (>=16)", ext.len);
                return -EINVAL;
            }
            g_free(s->backing_format);
            s->backing_format = g_malloc0(ext.len + 1);
            ret = pread_file(bs, offset, ext.len, s->backing_format);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "ERROR: ext_backing_format: "
                                 "Could not read format name");
                return ret;
            }
            break;

        case QCOW2_EXT_DATA_FILE:
            if (only_features) {
                break;
            }
            g_free(s->data_file_name);
            s->data_file_name = g_malloc0(ext.len + 1);
            ret = pread_file(bs, offset, ext.len, s->data_file_name);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "ERROR: Could not read data "
                                 "file name");
                return ret;
            }
            break;

        case QCOW2_EXT_BITMAPS:
            if (only_features) {
                break;
            }
            if (ext.len != sizeof(Qcow2BitmapsExt)) {
                error_setg(errp, "bitmaps_ext: Invalid extension length");
                return -EINVAL;
            }
            if (!(s->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
                /* Another program changed the image: bitmaps are stale.
                 * QEMU's warn_report() under the program's name, then its
                 * hint, which QEMU leaves without a newline (strata ends
                 * the line). */
                const char *prog = g_get_prgname();
                warn_print("%s%swarning: %s\n"
                           "Some clusters may be leaked, run 'qemu-img "
                           "check -r' on the image file to fix.",
                           prog ? prog : "", prog ? ": " : "",
                           s->version < 3
                           ? "This qcow2 v2 image contains bitmaps, but "
                             "they may have been modified by a program "
                             "without persistent bitmap support; so now "
                             "they must all be considered inconsistent"
                           : "a program lacking bitmap support modified "
                             "this file, so all bitmaps are now considered "
                             "inconsistent");
                s->bitmaps_ext_stale = true;
                break;
            }
            ret = pread_file(bs, offset, ext.len, &s->bitmaps_ext);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "bitmaps_ext: Could not read "
                                 "ext header");
                return ret;
            }
            s->bitmaps_ext.nb_bitmaps = be32toh(s->bitmaps_ext.nb_bitmaps);
            s->bitmaps_ext.reserved32 = be32toh(s->bitmaps_ext.reserved32);
            s->bitmaps_ext.bitmap_directory_size =
                be64toh(s->bitmaps_ext.bitmap_directory_size);
            s->bitmaps_ext.bitmap_directory_offset =
                be64toh(s->bitmaps_ext.bitmap_directory_offset);
            if (s->bitmaps_ext.reserved32 != 0) {
                error_setg(errp, "bitmaps_ext: Reserved field is not zero");
                return -EINVAL;
            }
            if (s->bitmaps_ext.nb_bitmaps > 65535) {
                error_setg(errp, "bitmaps_ext: Image has %" PRIu32 " bitmaps, "
                           "exceeding the QEMU supported maximum of 65535",
                           s->bitmaps_ext.nb_bitmaps);
                return -EINVAL;
            }
            if (s->bitmaps_ext.nb_bitmaps == 0) {
                error_setg(errp, "found bitmaps extension with zero bitmaps");
                return -EINVAL;
            }
            if (qcow2_offset_into_cluster(s,
                    s->bitmaps_ext.bitmap_directory_offset)) {
                error_setg(errp, "bitmaps_ext: invalid bitmap directory "
                           "offset");
                return -EINVAL;
            }
            /* QEMU's limit is 1 KiB per bitmap (1024 * 65535), not 64 MiB. */
            if (s->bitmaps_ext.bitmap_directory_size >
                QCOW2_MAX_BITMAP_DIRECTORY_SIZE) {
                error_setg(errp, "bitmaps_ext: bitmap directory size (%" PRIu64
                           ") exceeds the maximum supported size (%u)",
                           s->bitmaps_ext.bitmap_directory_size,
                           QCOW2_MAX_BITMAP_DIRECTORY_SIZE);
                return -EINVAL;
            }
            s->has_bitmaps_ext = true;
            break;

        case QCOW2_EXT_CRYPTO:
            if (only_features) {
                break;
            }
            if (s->crypt_method != QCOW2_CRYPT_LUKS) {
                error_setg(errp, "CRYPTO header extension only expected with "
                           "LUKS encryption method");
                return -EINVAL;
            }
            if (ext.len != 16) {
                error_setg(errp, "CRYPTO header extension size %u, but "
                           "expected size %zu", ext.len, (size_t)16);
                return -EINVAL;
            }
            ret = read_crypto_ext(bs, offset, errp);
            if (ret < 0) {
                return ret;
            }
            break;

        default:
            if (!only_features) {
                Qcow2UnknownExt *u = g_malloc0(sizeof(*u) + ext.len);
                u->magic = ext.magic;
                u->len = ext.len;
                ret = pread_file(bs, offset, ext.len, u->data);
                if (ret < 0) {
                    g_free(u);
                    error_setg_errno(errp, -ret, "ERROR: unknown extension: "
                                     "Could not read data");
                    return ret;
                }
                g_ptr_array_add(s->unknown_exts, u);
            }
            break;
        }
        offset += (ext.len + 7) & ~7u;
    }
    return 0;
}

int coroutine_fn qcow2_read_header(BlockNode *bs, json_t *options, int flags,
                                   GError **errp)
{
    Qcow2State *s = bs->opaque;
    Qcow2DiskHeader h;
    bool writable = flags & NODE_O_RDWR;
    uint64_t ext_end;
    int ret;

    memset(&h, 0, sizeof(h));
    ret = pread_file(bs, 0, sizeof(h), &h);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read qcow2 header");
        return ret;
    }
    if (be32toh(h.magic) != QCOW2_MAGIC) {
        error_setg(errp, "Image is not in qcow2 format");
        return -EINVAL;
    }
    s->version = (int)be32toh(h.version);
    if (s->version < 2 || s->version > 3) {
        error_setg(errp, "Unsupported qcow2 version %d", s->version);
        return -ENOTSUP;
    }
    s->cluster_bits = be32toh(h.cluster_bits);
    if (s->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
        s->cluster_bits > QCOW2_MAX_CLUSTER_BITS) {
        error_setg(errp, "Unsupported cluster size: 2^%u", s->cluster_bits);
        return -EINVAL;
    }
    s->cluster_size = 1ull << s->cluster_bits;

    if (s->version == 2) {
        s->incompatible_features = 0;
        s->compatible_features = 0;
        s->autoclear_features = 0;
        s->refcount_order = 4;
        s->header_length = QCOW2_V2_HEADER_LEN;
        s->compression_type = QCOW2_COMPRESSION_ZLIB;
    } else {
        s->incompatible_features = be64toh(h.incompatible_features);
        s->compatible_features = be64toh(h.compatible_features);
        s->autoclear_features = be64toh(h.autoclear_features);
        s->refcount_order = be32toh(h.refcount_order);
        s->header_length = be32toh(h.header_length);
        if (s->header_length < QCOW2_V3_MIN_HEADER_LEN) {
            error_setg(errp, "qcow2 header too short");
            return -EINVAL;
        }
        if (s->header_length > s->cluster_size) {
            error_setg(errp, "qcow2 header exceeds cluster size");
            return -EINVAL;
        }
        /* A field the header does not reach reads as zero. */
        s->compression_type = s->header_length > 104 ? h.compression_type : 0;
    }

    uint64_t backing_offset = be64toh(h.backing_file_offset);
    uint32_t backing_size = be32toh(h.backing_file_size);
    if (backing_offset > s->cluster_size) {
        error_setg(errp, "Invalid backing file offset");
        return -EINVAL;
    }
    ext_end = backing_offset ? backing_offset : s->cluster_size;

    if (s->incompatible_features & ~(uint64_t)QCOW2_INCOMPAT_MASK) {
        read_extensions(bs, s->header_length, ext_end, true, NULL);
        report_unsupported(s, s->incompatible_features &
                              ~(uint64_t)QCOW2_INCOMPAT_MASK, errp);
        return -ENOTSUP;
    }
    /* A check may open a corrupt image read-write: to repair it. */
    if ((s->incompatible_features & QCOW2_INCOMPAT_CORRUPT) && writable &&
        !(flags & NODE_O_CHECK)) {
        error_setg(errp, "qcow2: Image is corrupt; cannot be opened "
                   "read/write");
        return -EACCES;
    }

    /* Compression type: the bit and the field must agree. */
    if (s->compression_type > QCOW2_COMPRESSION_ZSTD) {
        error_setg(errp, "qcow2: unknown compression type: %u",
                   s->compression_type);
        return -ENOTSUP;
    }
    if ((s->compression_type != QCOW2_COMPRESSION_ZLIB) !=
        !!(s->incompatible_features & QCOW2_INCOMPAT_COMPRESSION)) {
        error_setg(errp, s->compression_type == QCOW2_COMPRESSION_ZLIB
                   ? "qcow2: Compression type incompatible feature bit must "
                     "not be set"
                   : "qcow2: Compression type incompatible feature bit must "
                     "be set");
        return -EINVAL;
    }

    s->extended_l2 = s->incompatible_features & QCOW2_INCOMPAT_EXTL2;
    if (s->extended_l2 && s->cluster_bits < 14) {
        error_setg(errp, "Extended L2 entries are only supported with "
                   "cluster sizes of at least 16384 bytes");
        return -EINVAL;
    }

    if (s->refcount_order > 6) {
        error_setg(errp, "Reference count entry width too large; may not "
                   "exceed 64 bits");
        return -EINVAL;
    }
    s->refcount_bits = 1u << s->refcount_order;
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                                             : (1ull << s->refcount_bits) - 1;
    s->refcount_block_bits = s->cluster_bits - (s->refcount_order - 3);
    s->refcount_block_size = 1ull << s->refcount_block_bits;

    s->crypt_method = be32toh(h.crypt_method);
    if (s->crypt_method > QCOW2_CRYPT_LUKS) {
        error_setg(errp, "Unsupported encryption method %" PRIu32,
                   s->crypt_method);
        return -EINVAL;
    }

    s->l2_entry_size = s->extended_l2 ? 16 : 8;
    s->l2_bits = s->cluster_bits - (s->extended_l2 ? 4 : 3);
    s->l2_size = 1ull << s->l2_bits;
    s->subclusters_per_cluster = s->extended_l2 ? QCOW2_SUBCLUSTERS : 1;
    s->subcluster_bits = s->cluster_bits - (s->extended_l2 ? 5 : 0);
    s->subcluster_size = 1ull << s->subcluster_bits;
    s->csize_shift = 62 - (s->cluster_bits - 8);
    s->csize_mask = (1u << (s->cluster_bits - 8)) - 1;
    s->cluster_offset_mask = (1ull << s->csize_shift) - 1;

    s->size = be64toh(h.size);

    s->refcount_table_offset = be64toh(h.refcount_table_offset);
    uint32_t rt_clusters = be32toh(h.refcount_table_clusters);
    if (rt_clusters == 0) {
        error_setg(errp, "Image does not contain a reference count table");
        return -EINVAL;
    }
    if (!validate_table(s, s->refcount_table_offset,
                        (uint64_t)rt_clusters << (s->cluster_bits - 3), 8,
                        QCOW2_MAX_REFTABLE_BYTES, "Reference count table",
                        errp)) {
        return -EINVAL;
    }
    s->refcount_table_size = rt_clusters << (s->cluster_bits - 3);

    s->nb_snapshots = be32toh(h.nb_snapshots);
    s->snapshots_offset = be64toh(h.snapshots_offset);
    /* A check reads (and may repair) the snapshot table itself. */
    if (!(flags & NODE_O_CHECK) &&
        !validate_table(s, s->snapshots_offset, s->nb_snapshots,
                        sizeof(Qcow2DiskSnapshot),
                        sizeof(Qcow2DiskSnapshot) * QCOW2_MAX_SNAPSHOTS,
                        "Snapshot table", errp)) {
        return -EINVAL;
    }

    s->l1_size = be32toh(h.l1_size);
    s->l1_table_offset = be64toh(h.l1_table_offset);
    if (!validate_table(s, s->l1_table_offset, s->l1_size, 8,
                        QCOW2_MAX_L1_BYTES, "Active L1 table", errp)) {
        return -EINVAL;
    }
    /*
     * Every guest cluster must have an L1 entry; a size needing more
     * entries than QEMU can index is refused first, as QEMU does.
     */
    uint64_t l2_span = 1ull << (s->l2_bits + s->cluster_bits);
    if (s->size > UINT64_MAX - l2_span ||
        (s->size + l2_span - 1) / l2_span > INT_MAX) {
        error_setg(errp, "Image is too big");
        return -EFBIG;
    }
    if ((s->size + l2_span - 1) / l2_span > s->l1_size) {
        error_setg(errp, "L1 table is too small");
        return -EINVAL;
    }

    ret = read_extensions(bs, s->version == 2 ? QCOW2_V2_HEADER_LEN
                                              : s->header_length,
                          ext_end, false, errp);
    if (ret < 0) {
        return ret;
    }

    if (backing_offset) {
        if (backing_size > MIN((uint64_t)QCOW2_MAX_BACKING_NAME,
                               s->cluster_size - backing_offset)) {
            error_setg(errp, "Backing file name too long");
            return -EINVAL;
        }
        s->backing_file = g_malloc0(backing_size + 1);
        ret = pread_file(bs, backing_offset, backing_size, s->backing_file);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read backing file name");
            return ret;
        }
    }
    (void)options;
    return 0;
}

/* ---- The header cluster ---- */

static size_t add_ext(uint8_t *buf, size_t pos, size_t size, uint32_t magic,
                      const void *data, uint32_t len)
{
    size_t total = 8 + (((size_t)len + 7) & ~(size_t)7);
    uint32_t be;

    if (pos == SIZE_MAX || pos + total > size) {
        return SIZE_MAX;
    }
    be = htobe32(magic);
    memcpy(buf + pos, &be, 4);
    be = htobe32(len);
    memcpy(buf + pos + 4, &be, 4);
    if (len) {
        memcpy(buf + pos + 8, data, len);
    }
    return pos + total;
}

int qcow2_header_layout(const Qcow2HeaderFields *f, uint8_t *buf, size_t cs)
{
    Qcow2DiskHeader *h = (Qcow2DiskHeader *)buf;
    size_t pos;

    memset(buf, 0, cs);
    h->magic = htobe32(QCOW2_MAGIC);
    h->version = htobe32((uint32_t)f->version);
    h->cluster_bits = htobe32(f->cluster_bits);
    h->size = htobe64(f->size);
    h->crypt_method = htobe32(f->crypt_method);
    h->l1_size = htobe32(f->l1_size);
    h->l1_table_offset = htobe64(f->l1_table_offset);
    h->refcount_table_offset = htobe64(f->refcount_table_offset);
    h->refcount_table_clusters = htobe32(f->refcount_table_clusters);
    h->nb_snapshots = htobe32(f->nb_snapshots);
    h->snapshots_offset = htobe64(f->snapshots_offset);
    if (f->version >= 3) {
        h->incompatible_features = htobe64(f->incompatible_features);
        h->compatible_features = htobe64(f->compatible_features);
        h->autoclear_features = htobe64(f->autoclear_features);
        h->refcount_order = htobe32(f->refcount_order);
        h->header_length = htobe32(QCOW2_V3_HEADER_LEN);
        h->compression_type = f->compression_type;
        pos = QCOW2_V3_HEADER_LEN;
    } else {
        /* A v2 header ends before the feature fields: they stay zero. */
        pos = QCOW2_V2_HEADER_LEN;
    }

    /* QEMU's extension order: it decides the bytes other tools compare. */
    if (f->backing_format) {
        pos = add_ext(buf, pos, cs, QCOW2_EXT_BACKING_FORMAT,
                      f->backing_format, (uint32_t)strlen(f->backing_format));
    }
    if (f->data_file) {
        pos = add_ext(buf, pos, cs, QCOW2_EXT_DATA_FILE, f->data_file,
                      (uint32_t)strlen(f->data_file));
    }
    if (f->crypto_header_offset) {
        uint64_t ce[2] = { htobe64(f->crypto_header_offset),
                           htobe64(f->crypto_header_length) };
        pos = add_ext(buf, pos, cs, QCOW2_EXT_CRYPTO, ce, sizeof(ce));
    }
    /*
     * The feature names would leave almost no room for a backing file name
     * in a small header cluster: QEMU writes them only above 4 KiB.
     */
    if (f->version >= 3 && cs > 4096) {
        pos = add_ext(buf, pos, cs, QCOW2_EXT_FEATURE_TABLE,
                      qcow2_feature_table, sizeof(qcow2_feature_table));
    }
    if (f->bitmaps_ext) {
        Qcow2BitmapsExt be = {
            .nb_bitmaps = htobe32(f->bitmaps_ext->nb_bitmaps),
            .bitmap_directory_size =
                htobe64(f->bitmaps_ext->bitmap_directory_size),
            .bitmap_directory_offset =
                htobe64(f->bitmaps_ext->bitmap_directory_offset),
        };
        pos = add_ext(buf, pos, cs, QCOW2_EXT_BITMAPS, &be, sizeof(be));
    }
    for (size_t i = 0; i < f->n_unknown_exts; i++) {
        const Qcow2UnknownExt *u = f->unknown_exts[i];
        pos = add_ext(buf, pos, cs, u->magic, u->data, u->len);
    }
    pos = add_ext(buf, pos, cs, QCOW2_EXT_END, NULL, 0);
    if (pos == SIZE_MAX) {
        return -ENOSPC;
    }
    if (f->backing_file) {
        size_t len = strlen(f->backing_file);

        if (len > cs - pos) {
            return -ENOSPC;
        }
        h->backing_file_offset = htobe64(pos);
        h->backing_file_size = htobe32((uint32_t)len);
        memcpy(buf + pos, f->backing_file, len);
    }
    return 0;
}

int coroutine_fn qcow2_update_header(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    size_t cs = s->cluster_size;
    uint64_t rt_bytes = (uint64_t)s->refcount_table_size * 8;
    uint8_t *buf = g_malloc(cs);
    Qcow2HeaderFields f = {
        .version = s->version,
        .cluster_bits = s->cluster_bits,
        .size = s->size,
        .crypt_method = s->crypt_method,
        .l1_size = s->l1_size,
        .l1_table_offset = s->l1_table_offset,
        .refcount_table_offset = s->refcount_table_offset,
        .refcount_table_clusters = (uint32_t)((rt_bytes + cs - 1) / cs),
        .nb_snapshots = s->nb_snapshots,
        .snapshots_offset = s->snapshots_offset,
        .incompatible_features = s->incompatible_features,
        .compatible_features = s->compatible_features,
        .autoclear_features = s->autoclear_features,
        .refcount_order = s->refcount_order,
        .compression_type = (uint8_t)s->compression_type,
        .backing_file = s->backing_file,
        .backing_format = s->backing_format,
        .data_file = s->data_file_name,
        .crypto_header_offset = s->crypto_header_offset,
        .crypto_header_length = s->crypto_header_length,
        .bitmaps_ext = s->has_bitmaps_ext ? &s->bitmaps_ext : NULL,
        .unknown_exts = s->unknown_exts ?
            (const Qcow2UnknownExt *const *)s->unknown_exts->pdata : NULL,
        .n_unknown_exts = s->unknown_exts ? s->unknown_exts->len : 0,
    };
    int ret = qcow2_header_layout(&f, buf, cs);

    if (ret >= 0) {
        ret = child_co_pwrite(bs->file, 0, (int64_t)cs, buf, 0);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
    g_free(buf);
    return ret < 0 ? ret : 0;
}

/* ---- Header fields written in place ---- */

static int coroutine_fn write_incompat(BlockNode *bs, uint64_t value)
{
    Qcow2State *s = bs->opaque;
    uint64_t be = htobe64(value);
    int ret;

    g_assert(s->version >= 3);
    ret = child_co_pwrite(bs->file, offsetof(Qcow2DiskHeader,
                                             incompatible_features),
                          sizeof(be), &be, 0);
    if (ret < 0) {
        return ret;
    }
    ret = node_co_flush(bs->file->bs);
    if (ret < 0) {
        return ret;
    }
    s->incompatible_features = value;
    return 0;
}

int coroutine_fn qcow2_set_incompat_bit(BlockNode *bs, uint64_t bit)
{
    Qcow2State *s = bs->opaque;

    if (s->incompatible_features & bit) {
        return 0;
    }
    return write_incompat(bs, s->incompatible_features | bit);
}

int coroutine_fn qcow2_clear_incompat_bit(BlockNode *bs, uint64_t bit)
{
    Qcow2State *s = bs->opaque;

    if (!(s->incompatible_features & bit)) {
        return 0;
    }
    return write_incompat(bs, s->incompatible_features & ~bit);
}

/*
 * Lazy refcounts: from the first allocation on, L2 tables may reach the
 * disk before the refcounts of the clusters they point at, so the image
 * is marked dirty first (on disk, after everything before it), and a
 * crash leaves an image that says it needs a repair.
 */
int coroutine_fn qcow2_mark_dirty(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int ret;

    if (!s->lazy_refcounts || s->version < 3 ||
        (s->incompatible_features & QCOW2_INCOMPAT_DIRTY)) {
        return 0;
    }
    ret = node_co_flush(bs->file->bs);
    if (ret >= 0) {
        ret = qcow2_set_incompat_bit(bs, QCOW2_INCOMPAT_DIRTY);
    }
    if (ret < 0) {
        return ret;
    }
    s->dirty_set_by_us = true;
    qcow2_cache_set_dependency(s->l2_cache, NULL);
    return 0;
}

/* Refcounts on disk again: the ordering returns and the bit goes. */
int coroutine_fn qcow2_mark_clean(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int ret = qcow2_cache_flush(s->l2_cache);

    if (ret >= 0) {
        ret = qcow2_cache_flush(s->refcount_cache);
    }
    if (ret >= 0 && s->version >= 3) {
        ret = qcow2_clear_incompat_bit(bs, QCOW2_INCOMPAT_DIRTY);
    }
    if (ret >= 0) {
        s->dirty_set_by_us = false;
        qcow2_cache_set_dependency(s->l2_cache, s->refcount_cache);
    }
    return ret;
}

void coroutine_fn qcow2_signal_corruption(BlockNode *bs, bool fatal,
                                          int64_t offset, int64_t size,
                                          const char *fmt, ...)
{
    Qcow2State *s = bs->opaque;
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);

    /* Read-only users only learn about it: the image stays untouched. */
    fatal = fatal && !bs->read_only;
    /* One message per image, except a first fatal one after others. */
    if ((s->corrupt && fatal) || (s->signaled_corruption && !fatal)) {
        g_free(msg);
        return;
    }
    s->signaled_corruption = true;
    if (fatal) {
        warn_print("qcow2: Marking image as corrupt: %s; further corruption "
                   "events will be suppressed", msg);
    } else {
        warn_print("qcow2: Image is corrupt: %s; further non-fatal corruption "
                   "events will be suppressed", msg);
    }
    node_report_corruption(bs, msg, offset, size, fatal);
    g_free(msg);
    if (fatal) {
        s->corrupt = true;
        if (s->version >= 3) {
            qcow2_set_incompat_bit(bs, QCOW2_INCOMPAT_CORRUPT);
        }
    }
}
