/*
 * qcow2: changing the options of an existing image (qemu-img amend).
 *
 * The steps run in QEMU 7.2's order, because a failing step leaves the
 * earlier ones done and the messages must match: options are checked in
 * the order of the amend option list, then the version is raised, the
 * data-file settings and the header are written, the backing file is
 * compared (it cannot be changed here: that is rebase's job), lazy
 * refcounts are switched, the image is resized, and the version is
 * lowered last so that features can be dropped before.  The header is
 * written by qcow2_update_header() (qcow2-header.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "strata/dirty-bitmap.h"
#include "qcow2.h"

/* ---- Downgrade: zero clusters do not exist in v2 ---- */

/*
 * Turn the zero clusters of one L1 table into zeroed data clusters (or,
 * without a backing file, into unallocated ones: they read as zeroes
 * anyway).  L2 tables are read and written directly, not through the
 * cache, because snapshot tables may be shared; the caller emptied the
 * cache.  Lock held.
 */
static int coroutine_fn expand_zeroes_in_l1(BlockNode *bs,
                                            const uint64_t *l1,
                                            uint32_t l1_size)
{
    Qcow2State *s = bs->opaque;
    size_t l2_bytes = s->l2_size * s->l2_entry_size;
    uint64_t *l2 = g_malloc(l2_bytes);
    int ret = 0;

    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2_offset = l1[i] & L1E_OFFSET_MASK;
        uint64_t l2_refcount;
        bool dirty = false;

        if (!l2_offset) {
            continue;
        }
        ret = child_co_pread(bs->file, (int64_t)l2_offset, (int64_t)l2_bytes,
                             l2, 0);
        if (ret < 0) {
            break;
        }
        ret = qcow2_get_refcount(bs, l2_offset >> s->cluster_bits,
                                 &l2_refcount);
        if (ret < 0) {
            break;
        }
        for (uint64_t j = 0; j < s->l2_size; j++) {
            uint64_t entry = qcow2_l2_entry(s, l2, (unsigned)j);
            Qcow2SubclusterType t = qcow2_subcluster_type(s, entry, 0, 0);
            uint64_t offset = entry & L2E_OFFSET_MASK;
            uint64_t refcount = 0;

            if (t != QCOW2_SC_ZERO_PLAIN && t != QCOW2_SC_ZERO_ALLOC) {
                continue;
            }
            if (t == QCOW2_SC_ZERO_ALLOC) {
                ret = qcow2_get_refcount(bs, offset >> s->cluster_bits,
                                         &refcount);
                if (ret < 0) {
                    goto out;
                }
            }
            if (t == QCOW2_SC_ZERO_PLAIN && !bs->backing) {
                qcow2_set_l2_entry(s, l2, (unsigned)j, 0);
                dirty = true;
                continue;
            }
            /*
             * A zero cluster that other tables still use as data (a
             * snapshot taken before the zero write) must keep its
             * contents: this table gets a cluster of its own.  QEMU 7.2
             * zeroes it in place and corrupts the snapshot.
             */
            if (t == QCOW2_SC_ZERO_PLAIN || refcount > l2_refcount) {
                uint64_t old = t == QCOW2_SC_ZERO_ALLOC ? offset : 0;

                ret = qcow2_alloc_clusters(bs, 1, &offset);
                if (ret < 0) {
                    goto out;
                }
                /* Every L2 table sharing this one now points at it. */
                for (uint64_t k = 1; k < l2_refcount; k++) {
                    ret = qcow2_update_cluster_refcount(
                        bs, offset >> s->cluster_bits, 1,
                        QCOW2_DISCARD_NEVER);
                    if (ret < 0) {
                        goto out;
                    }
                }
                refcount = l2_refcount;
                for (uint64_t k = 0; old && k < l2_refcount; k++) {
                    ret = qcow2_update_cluster_refcount(
                        bs, old >> s->cluster_bits, -1, QCOW2_DISCARD_NEVER);
                    if (ret < 0) {
                        goto out;
                    }
                }
            }
            ret = qcow2_check_overlap(bs, 0, offset, s->cluster_size);
            if (ret < 0) {
                goto out;
            }
            ret = child_co_pwrite_zeroes(s->data_file, (int64_t)offset,
                                         (int64_t)s->cluster_size, 0);
            if (ret < 0) {
                goto out;
            }
            qcow2_set_l2_entry(s, l2, (unsigned)j,
                               offset | (refcount == 1 ?
                                         QCOW_OFLAG_COPIED : 0));
            dirty = true;
        }
        if (dirty) {
            ret = qcow2_check_overlap(bs, QCOW2_OL_ACTIVE_L2 |
                                      QCOW2_OL_INACTIVE_L2, l2_offset,
                                      l2_bytes);
            if (ret >= 0) {
                ret = child_co_pwrite(bs->file, (int64_t)l2_offset,
                                      (int64_t)l2_bytes, l2, 0);
            }
            if (ret < 0) {
                break;
            }
        }
    }
out:
    g_free(l2);
    return ret < 0 ? ret : 0;
}

static int coroutine_fn expand_zero_clusters(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int ret;

    co_mutex_lock(&s->lock);
    qcow2_wait_inflight(bs, 0, UINT64_MAX);
    ret = qcow2_cache_flush(s->l2_cache);
    if (ret < 0) {
        goto out;
    }
    qcow2_cache_empty(s->l2_cache);
    ret = expand_zeroes_in_l1(bs, s->l1_table, s->l1_size);
    for (uint32_t i = 0; ret >= 0 && i < s->nb_snapshots; i++) {
        Qcow2Snapshot *sn = &s->snapshots[i];
        uint64_t *l1;

        GError *invalid = NULL;

        /* QEMU reports the reason on its own line (iotest 080). */
        ret = qcow2_validate_snapshot_l1(s, sn, &invalid);
        if (ret < 0) {
            warn_print("%s: %s", g_get_prgname() ? g_get_prgname()
                                                 : "strata",
                       invalid->message);
            g_error_free(invalid);
            break;
        }
        if (!sn->l1_size) {
            continue;
        }
        l1 = g_new(uint64_t, sn->l1_size);
        ret = child_co_pread(bs->file, (int64_t)sn->l1_table_offset,
                             (int64_t)sn->l1_size * 8, l1, 0);
        if (ret >= 0) {
            for (uint32_t k = 0; k < sn->l1_size; k++) {
                l1[k] = be64toh(l1[k]);
            }
            ret = expand_zeroes_in_l1(bs, l1, sn->l1_size);
        }
        g_free(l1);
    }
    if (ret >= 0) {
        ret = qcow2_cache_flush(s->refcount_cache);
    }
    if (ret >= 0) {
        ret = node_co_flush(bs->file->bs);
    }
out:
    co_mutex_unlock(&s->lock);
    return ret;
}

static int coroutine_fn has_compressed_clusters(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    uint64_t offset = 0;
    int ret = 0;

    co_mutex_lock(&s->lock);
    while (offset < s->size) {
        uint64_t bytes = s->size - offset, host;
        Qcow2SubclusterType t;

        ret = qcow2_get_host_offset(bs, offset, &bytes, &host, &t);
        if (ret < 0) {
            break;
        }
        if (t == QCOW2_SC_COMPRESSED) {
            ret = 1;
            break;
        }
        if (!bytes) {
            ret = -EIO;
            break;
        }
        offset += bytes;
    }
    co_mutex_unlock(&s->lock);
    return ret;
}

/* Write the dirty tables and drop the dirty bit (QEMU's mark_clean). */
static int coroutine_fn mark_clean(BlockNode *bs)
{
    Qcow2State *s = bs->opaque;
    int ret;

    co_mutex_lock(&s->lock);
    ret = qcow2_mark_clean(bs);
    co_mutex_unlock(&s->lock);
    return ret;
}

static int coroutine_fn downgrade(BlockNode *bs, Qcow2AmendStatus *status,
                                  void *opaque, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int old_version = s->version;
    uint64_t incompat;
    int ret;

    if (s->refcount_order != 4) {
        error_setg(errp, "compat=0.10 requires refcount_bits=16");
        return -ENOTSUP;
    }
    if (qcow2_has_data_file(s)) {
        error_setg(errp, "Cannot downgrade an image with a data file");
        return -ENOTSUP;
    }
    /* v2 readers would not know the snapshot's own size matters. */
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (s->snapshots[i].vm_state_size > UINT32_MAX ||
            s->snapshots[i].disk_size != s->size) {
            error_setg(errp, "Internal snapshots prevent downgrade of image");
            return -ENOTSUP;
        }
    }
    if (s->incompatible_features & QCOW2_INCOMPAT_DIRTY) {
        ret = mark_clean(bs);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Failed to make the image clean");
            return ret;
        }
    }
    incompat = s->incompatible_features & ~(uint64_t)QCOW2_INCOMPAT_COMPRESSION;
    if (incompat) {
        error_setg(errp, "Cannot downgrade an image with incompatible "
                   "features 0x%" PRIx64 " set", incompat);
        return -ENOTSUP;
    }
    s->compatible_features = 0;
    s->autoclear_features = 0;

    ret = expand_zero_clusters(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to turn zero into data clusters");
        return ret;
    }
    if (status) {
        status(opaque, 1, 1);
    }
    if (s->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        ret = has_compressed_clusters(bs);
        if (ret < 0) {
            error_setg(errp, "Failed to check block status");
            return -EINVAL;
        }
        if (ret) {
            error_setg(errp, "Cannot downgrade an image with zstd "
                       "compression type and existing compressed clusters");
            return -ENOTSUP;
        }
        s->incompatible_features &= ~(uint64_t)QCOW2_INCOMPAT_COMPRESSION;
        s->compression_type = QCOW2_COMPRESSION_ZLIB;
    }
    s->version = 2;
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        s->version = old_version;
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }
    return 0;
}

static int coroutine_fn upgrade(BlockNode *bs, Qcow2AmendStatus *status,
                                void *opaque, GError **errp)
{
    Qcow2State *s = bs->opaque;
    int ret;

    if (status) {
        status(opaque, 0, 2);
    }
    /*
     * v3 wants every snapshot entry to carry its 64-bit VM state size and
     * disk size; v2 entries may lack them.  The table is then rewritten,
     * which always writes the v3 fields (in memory the disk size of such
     * an entry is the image's, as v2 readers assume).
     */
    for (uint32_t i = 0; i < s->nb_snapshots; i++) {
        if (s->snapshots[i].extra_size < 16) {
            ret = qcow2_write_snapshot_table(bs);
            if (ret < 0) {
                error_setg_errno(errp, -ret,
                                 "Failed to update the snapshot table");
                return ret;
            }
            break;
        }
    }
    if (status) {
        status(opaque, 1, 2);
    }
    s->version = 3;
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        s->version = 2;
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }
    if (status) {
        status(opaque, 2, 2);
    }
    return 0;
}

/* ---- The amend callback ---- */

/*
 * One progress figure for several long steps (version change, refcount
 * width): each step reports its own done/total; the steps finished so far
 * add their totals, and the total of the steps still to come is projected
 * from the average so far, as QEMU does, so the percentage a user sees
 * may go back when a step turns out longer than projected.
 */
typedef struct {
    Qcow2AmendStatus *status;
    void *opaque;
    int steps;            /* how many steps this amend runs */
    int finished;         /* how many are done */
    int current, last;    /* step ids; 0 = none */
    int64_t finished_work;
    int64_t last_total;
} AmendProgress;

static void amend_progress(void *opaque, int64_t done, int64_t total)
{
    AmendProgress *p = opaque;

    if (p->current != p->last) {
        if (p->last) {
            p->finished_work += p->last_total;
            p->finished++;
        }
        p->last = p->current;
    }
    p->last_total = total;
    int64_t known = p->finished_work + total;
    int64_t projected = known * (p->steps - p->finished - 1) /
                        (p->finished + 1);
    if (p->status) {
        p->status(p->opaque, p->finished_work + done, known + projected);
    }
}

static const char *opt_str(json_t *v)
{
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool opt_bool(json_t *v, bool def)
{
    if (json_is_boolean(v)) {
        return json_is_true(v);
    }
    if (json_is_string(v)) {
        const char *t = json_string_value(v);
        return !strcmp(t, "on") || !strcmp(t, "yes") || !strcmp(t, "true") ||
               !strcmp(t, "y");
    }
    return def;
}

/* A number as QEMU's int holds it (larger values wrap, "-1" is -1). */
static int opt_int(json_t *v)
{
    if (json_is_integer(v)) {
        return (int)(uint64_t)json_integer_value(v);
    }
    if (json_is_string(v)) {
        return (int)strtoull(json_string_value(v), NULL, 0);
    }
    return 0;
}

static uint64_t opt_u64(json_t *v)
{
    if (json_is_integer(v)) {
        return (uint64_t)json_integer_value(v);
    }
    if (json_is_string(v)) {
        return strtoull(json_string_value(v), NULL, 0);
    }
    return 0;
}

static void set_name(char **field, const char *value)
{
    g_free(*field);
    *field = value && *value ? g_strdup(value) : NULL;
}

int coroutine_fn qcow2_amend(BlockNode *bs, json_t *options, bool force,
                             Qcow2AmendStatus *status, void *opaque,
                             GError **errp)
{
    Qcow2State *s = bs->opaque;
    int old_version = s->version, new_version = old_version;
    uint64_t new_size = 0;
    const char *backing_file = NULL, *backing_format = NULL;
    const char *data_file = NULL;
    bool have_backing_opt = false;
    bool lazy = s->lazy_refcounts;
    bool data_file_raw = qcow2_data_file_is_raw(s);
    int refcount_bits = (int)s->refcount_bits;
    json_t *v;
    int ret;

    (void)force; /* only LUKS keyslot changes use it */

    if (s->corrupt) {
        error_setg(errp, "Image is corrupt");
        return -ENOMEDIUM;
    }
    /* In the order of QEMU's amend option list: it decides which error. */
    static const char *const crypt_opts[] = {
        "encrypt.state", "encrypt.keyslot", "encrypt.old-secret",
        "encrypt.new-secret", "encrypt.iter-time",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(crypt_opts); i++) {
        if (json_object_get(options, crypt_opts[i])) {
            if (s->crypt_method == QCOW2_CRYPT_NONE) {
                error_setg(errp, "Can't amend encryption options - "
                           "encryption not present");
                return -EINVAL;
            }
            if (s->crypt_method != QCOW2_CRYPT_LUKS) {
                error_setg(errp, "Only LUKS encryption options can be "
                           "amended");
                return -ENOTSUP;
            }
            ret = qcow2_crypto_amend(bs, options, force, errp);
            if (ret < 0) {
                return ret;
            }
            break;
        }
    }
    if ((v = json_object_get(options, "size"))) {
        new_size = opt_u64(v);
    }
    if ((v = json_object_get(options, "compat"))) {
        const char *compat = opt_str(v);

        if (!compat) {
            /* keep the version */
        } else if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
            new_version = 2;
        } else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
            new_version = 3;
        } else {
            error_setg(errp, "Unknown compatibility level %s", compat);
            return -EINVAL;
        }
    }
    if ((v = json_object_get(options, "backing_file"))) {
        backing_file = opt_str(v);
        have_backing_opt = true;
    }
    if ((v = json_object_get(options, "backing_fmt"))) {
        backing_format = opt_str(v);
        have_backing_opt = true;
    }
    if ((v = json_object_get(options, "data_file"))) {
        data_file = opt_str(v);
        if (data_file && !qcow2_has_data_file(s)) {
            error_setg(errp, "data-file can only be set for images that use "
                       "an external data file");
            return -EINVAL;
        }
    }
    if ((v = json_object_get(options, "data_file_raw"))) {
        data_file_raw = opt_bool(v, data_file_raw);
        if (data_file_raw && !qcow2_data_file_is_raw(s)) {
            error_setg(errp, "data-file-raw cannot be set on existing images");
            return -EINVAL;
        }
    }
    if ((v = json_object_get(options, "lazy_refcounts"))) {
        lazy = opt_bool(v, lazy);
    }
    if ((v = json_object_get(options, "refcount_bits"))) {
        refcount_bits = opt_int(v);
        if (refcount_bits <= 0 || refcount_bits > 64 ||
            (refcount_bits & (refcount_bits - 1))) {
            error_setg(errp, "Refcount width must be a power of two and may "
                       "not exceed 64 bits");
            return -EINVAL;
        }
    }

    AmendProgress progress = {
        .status = status,
        .opaque = opaque,
        .steps = (new_version != old_version) +
                 ((unsigned)refcount_bits != s->refcount_bits),
    };
    if (new_version > old_version) {
        progress.current = 1;
        ret = upgrade(bs, amend_progress, &progress, errp);
        if (ret < 0) {
            return ret;
        }
    }
    if ((unsigned)refcount_bits != s->refcount_bits) {
        if (new_version < 3 && refcount_bits != 16) {
            error_setg(errp, "Refcount widths other than 16 bits require "
                       "compatibility level 1.1 or above (use compat=1.1 or "
                       "greater)");
            return -EINVAL;
        }
        progress.current = 2;
        ret = qcow2_change_refcount_order(bs,
                                          (unsigned)__builtin_ctz(
                                              (unsigned)refcount_bits),
                                          amend_progress, &progress, errp);
        if (ret < 0) {
            return ret;
        }
    }

    if (data_file_raw) {
        s->autoclear_features |= QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    } else {
        s->autoclear_features &= ~(uint64_t)QCOW2_AUTOCLEAR_DATA_FILE_RAW;
    }
    if (data_file) {
        set_name(&s->data_file_name, data_file);
    }
    ret = qcow2_update_header(bs);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Failed to update the image header");
        return ret;
    }

    if (have_backing_opt &&
        (g_strcmp0(backing_file, s->backing_file) ||
         g_strcmp0(backing_format, s->backing_format))) {
        /* The tool adds the hint that points at its rebase command. */
        error_setg(errp, "Cannot amend the backing file");
        return -EINVAL;
    }

    if (lazy != s->lazy_refcounts) {
        if (lazy) {
            if (new_version < 3) {
                error_setg(errp, "Lazy refcounts only supported with "
                           "compatibility level 1.1 and above (use compat=1.1 "
                           "or greater)");
                return -EINVAL;
            }
            s->compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
            ret = qcow2_update_header(bs);
            if (ret < 0) {
                s->compatible_features &= ~(uint64_t)QCOW2_COMPAT_LAZY_REFCOUNTS;
                error_setg_errno(errp, -ret,
                                 "Failed to update the image header");
                return ret;
            }
            s->lazy_refcounts = true;
        } else {
            ret = mark_clean(bs);
            if (ret < 0) {
                error_setg_errno(errp, -ret, "Failed to make the image clean");
                return ret;
            }
            s->compatible_features &= ~(uint64_t)QCOW2_COMPAT_LAZY_REFCOUNTS;
            ret = qcow2_update_header(bs);
            if (ret < 0) {
                s->compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
                error_setg_errno(errp, -ret,
                                 "Failed to update the image header");
                return ret;
            }
            s->lazy_refcounts = false;
        }
    }

    if (new_size) {
        if (new_size > (uint64_t)INT64_MAX) {
            error_setg(errp, "Image size cannot be negative");
            return -EINVAL;
        }
        /* Exact: amend promises the image gets exactly this size. */
        ret = bs->drv->co_truncate(bs, (int64_t)new_size, true, PREALLOC_MODE_OFF,
                                   errp);
        node_invalidate_length(bs);
        if (ret < 0) {
            return ret;
        }
        /*
         * As node_co_truncate() does (QEMU amends through blk_truncate):
         * bitmaps of the old size would be stored with the old table
         * size, which QEMU then finds inconsistent.
         */
        node_dirty_bitmaps_truncate(bs, (int64_t)new_size);
    }

    if (new_version < old_version) {
        progress.current = 3;
        ret = downgrade(bs, amend_progress, &progress, errp);
        if (ret < 0) {
            return ret;
        }
    }
    return 0;
}
