/*
 * qcow2's answer to size measurement (qemu-img measure, QEMU's
 * qcow2_measure): how large a new image with the given creation options
 * would be, empty or holding a copy of in_bs.  "required" counts what the
 * copy needs (the data in_bs really has plus all metadata of a fully
 * allocated image: the estimate errs on the large side, as QEMU's does);
 * "fully allocated" what the image takes with every cluster allocated.
 * The checks and their messages come in QEMU 7.2's order.
 */
#include <errno.h>
#include <string.h>

#include "strata/dirty-bitmap.h"
#include "../crypto/crypto.h"
#include "qcow2.h"

#define ROUND_UP_U64(n, d) (((n) + (d) - 1) / (d) * (d))
#define DIV_ROUND_UP_U64(n, d) (((n) + (d) - 1) / (d))

/* Creation options as node_measure() passes them (see node_amend). */
static bool opt_bool(json_t *o, const char *name, bool def)
{
    json_t *v = json_object_get(o, name);
    const char *s = json_string_value(v);

    if (json_is_boolean(v)) {
        return json_is_true(v);
    }
    return s ? !strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true")
             : def;
}

static uint64_t opt_num(json_t *o, const char *name, uint64_t def)
{
    json_t *v = json_object_get(o, name);

    if (json_is_integer(v)) {
        return (uint64_t)json_integer_value(v);
    }
    /* Past INT64_MAX a number travels as text. */
    return json_is_string(v) ? g_ascii_strtoull(json_string_value(v), NULL, 10)
                             : def;
}

static const char *opt_str(json_t *o, const char *name)
{
    return json_string_value(json_object_get(o, name));
}

/*
 * Refcount table and blocks needed to count `clusters` clusters plus
 * themselves: iterate to the fixed point where adding the refcount
 * structures no longer needs more of them.
 */
static uint64_t refcount_metadata_size(uint64_t clusters,
                                       uint64_t cluster_size,
                                       int refcount_order)
{
    uint64_t per_table_cluster = cluster_size / 8;
    uint64_t per_block = cluster_size * 8 / (1u << refcount_order);
    uint64_t table = 0, blocks = 0, n = 0, last;

    do {
        last = n;
        blocks = DIV_ROUND_UP_U64(clusters + table + blocks, per_block);
        table = DIV_ROUND_UP_U64(blocks, per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

/* Size of an image with every cluster of virtual_size allocated. */
static uint64_t prealloc_size(uint64_t virtual_size, uint64_t cluster_size,
                              int refcount_order, bool extended_l2)
{
    uint64_t aligned = ROUND_UP_U64(virtual_size, cluster_size);
    uint64_t l2e_size = extended_l2 ? 16 : 8;
    uint64_t meta = cluster_size; /* the header cluster */
    uint64_t nl2e, nl1e;

    nl2e = ROUND_UP_U64(aligned / cluster_size, cluster_size / l2e_size);
    meta += nl2e * l2e_size;
    nl1e = ROUND_UP_U64(nl2e * l2e_size / cluster_size, cluster_size / 8);
    meta += nl1e * 8;
    meta += refcount_metadata_size((meta + aligned) / cluster_size,
                                   cluster_size, refcount_order);
    return meta + aligned;
}

/* Bytes of whole clusters that in_bs's data (size bytes) takes. */
static bool allocated_size(BlockNode *in_bs, int64_t size,
                           uint64_t cluster_size, uint64_t *required,
                           GError **errp)
{
    for (int64_t offset = 0, pnum = 0; offset < size; offset += pnum) {
        int st = node_co_block_status_above(in_bs, NULL, false, true, offset,
                                            size - offset, &pnum, NULL, NULL,
                                            NULL);
        if (st < 0) {
            error_setg_errno(errp, -st, "Unable to get block status");
            return false;
        }
        if (st & BLOCK_ZERO) {
            continue;
        }
        if ((st & (BLOCK_DATA | BLOCK_ALLOCATED)) ==
            (BLOCK_DATA | BLOCK_ALLOCATED)) {
            /* Whole clusters: round the run up to the next one. */
            pnum = (int64_t)ROUND_UP_U64((uint64_t)(offset + pnum),
                                         cluster_size) - offset;
            *required += (uint64_t)offset % cluster_size + (uint64_t)pnum;
        }
    }
    return true;
}

bool coroutine_fn qcow2_measure(json_t *opts, BlockNode *in_bs,
                                BlockMeasureInfo *info, GError **errp)
{
    uint64_t luks_size = 0;
    bool extended_l2 = opt_bool(opts, "extended_l2", false);
    uint64_t cluster_size = opt_num(opts, "cluster_size", 65536);
    const char *compat = opt_str(opts, "compat");
    const char *prealloc = opt_str(opts, "preallocation");
    const char *enc = opt_str(opts, "encrypt.format");
    uint64_t refcount_bits, virtual_size, l2_tables, required = 0;
    int version = 3, refcount_order;
    bool full;

    if (cluster_size < 512 || cluster_size > 2 * 1024 * 1024 ||
        (cluster_size & (cluster_size - 1))) {
        error_setg(errp, "Cluster size must be a power of two between %d "
                   "and %dk", 512, 2048);
        return false;
    }
    if (extended_l2 && cluster_size < 16384) {
        error_setg(errp, "Extended L2 entries are only supported with "
                   "cluster sizes of at least %d bytes", 16384);
        return false;
    }
    if (compat && !strcmp(compat, "0.10")) {
        version = 2;
    } else if (compat && strcmp(compat, "1.1")) {
        error_setg(errp, "Invalid compatibility level: '%s'", compat);
        return false;
    }
    refcount_bits = opt_num(opts, "refcount_bits", 16);
    if (refcount_bits > 64 || !refcount_bits ||
        (refcount_bits & (refcount_bits - 1))) {
        error_setg(errp, "Refcount width must be a power of two and may not "
                   "exceed 64 bits");
        return false;
    }
    if (version < 3 && refcount_bits != 16) {
        error_setg(errp, "Different refcount widths than 16 bits require "
                   "compatibility level 1.1 or above (use compat=1.1 or "
                   "greater)");
        return false;
    }
    refcount_order = __builtin_ctzll(refcount_bits);
    if (prealloc && strcmp(prealloc, "off") && strcmp(prealloc, "metadata") &&
        strcmp(prealloc, "falloc") && strcmp(prealloc, "full")) {
        error_setg(errp, "invalid parameter value: %s", prealloc);
        return false;
    }
    full = prealloc && (!strcmp(prealloc, "falloc") ||
                        !strcmp(prealloc, "full"));
    if (enc && !strcmp(enc, "luks")) {
        if (!crypto_luks_measure_header(opts, "encrypt.", &luks_size, errp)) {
            return false;
        }
        luks_size = ROUND_UP_U64(luks_size, cluster_size);
    }

    virtual_size = ROUND_UP_U64(opt_num(opts, "size", 0), cluster_size);
    l2_tables = DIV_ROUND_UP_U64(virtual_size / cluster_size,
                                 cluster_size / (extended_l2 ? 16 : 8));
    if (l2_tables * 8 > QCOW2_MAX_L1_BYTES) {
        error_setg(errp, "The image size is too large (try using a larger "
                   "cluster size)");
        return false;
    }

    if (in_bs) {
        int64_t ssize = node_getlength(in_bs);

        if (ssize < 0) {
            error_setg_errno(errp, (int)-ssize,
                             "Unable to get image virtual_size");
            return false;
        }
        virtual_size = ROUND_UP_U64((uint64_t)ssize, cluster_size);
        if (opt_str(opts, "backing_file")) {
            /* The new backing file may share nothing with the source. */
            required = virtual_size;
        } else if (!allocated_size(in_bs, ssize, cluster_size, &required,
                                   errp)) {
            return false;
        }
    }
    if (full) {
        required = virtual_size;
    }
    info->fully_allocated = luks_size +
                            prealloc_size(virtual_size, cluster_size,
                                          refcount_order, extended_l2);
    info->required = info->fully_allocated - virtual_size + required;
    /* The source's persistent bitmaps, as loaded when it was opened. */
    if (version >= 3 && in_bs && node_supports_persistent_dirty_bitmap(in_bs)) {
        info->has_bitmaps = true;
        info->bitmaps = dirty_bitmaps_qcow2_size(in_bs, cluster_size);
    }
    return true;
}
