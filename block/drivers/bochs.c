/*
 * bochs: the "growing" disk images of the Bochs emulator, read only.
 *
 * Layout (little endian): a 512-byte header naming the format ("Bochs
 * Virtual HD Image", type "Redolog", subtype "Growing", version 1 or 2),
 * then a catalog of 32-bit entries, one per extent of the disk: the index
 * of the block holding the extent, or 0xffffffff for none.  Blocks follow
 * the catalog, each a bitmap (one bit per 512-byte sector of the extent,
 * set when the sector is stored) and then the extent's sectors.  Sectors
 * not stored read as zeroes.
 *
 * The checks at open and their messages are QEMU's, so that damaged
 * images are refused alike; like QEMU the driver creates nothing, changes
 * nothing and has no consistency check.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "strata/block-driver.h"
#include "strata/coroutine.h"
#include "strata/units.h"

#define BOCHS_MAGIC "Bochs Virtual HD Image"
#define BOCHS_TYPE "Redolog"
#define BOCHS_SUBTYPE "Growing"
#define BOCHS_V1 0x00010000u
#define BOCHS_V2 0x00020000u
#define BOCHS_HEADER_SIZE 512
#define BOCHS_NO_BLOCK 0xffffffffu
#define BOCHS_MAX_CATALOG 0x100000u     /* what bximage needs for ~8 TB */
#define BOCHS_MAX_EXTENT 0x800000u

/* Offsets in the header. */
enum {
    H_MAGIC = 0, H_TYPE = 32, H_SUBTYPE = 48, H_VERSION = 64, H_HEADER = 68,
    H_CATALOG = 72, H_BITMAP = 76, H_EXTENT = 80,
    H_DISK_V2 = 88,             /* after a reserved 32-bit word */
    H_DISK_V1 = 84,
};

typedef struct {
    uint32_t *catalog;
    uint32_t catalog_size;
    uint64_t data_offset;       /* where block 0 starts */
    uint32_t bitmap_blocks;     /* sectors of a block's bitmap */
    uint32_t extent_blocks;     /* sectors of a block's extent */
    uint32_t extent_size;
    uint64_t size;
} BochsState;

static uint32_t le32_at(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t le64_at(const uint8_t *p)
{
    return (uint64_t)le32_at(p) | (uint64_t)le32_at(p + 4) << 32;
}

/* The fixed-size text fields hold NUL-terminated names. */
static bool field_is(const uint8_t *field, size_t len, const char *want)
{
    return strnlen((const char *)field, len) == strlen(want) &&
           !memcmp(field, want, strlen(want));
}

static bool bochs_header_ok(const uint8_t *h)
{
    uint32_t version = le32_at(h + H_VERSION);
    return field_is(h + H_MAGIC, 32, BOCHS_MAGIC) &&
           field_is(h + H_TYPE, 16, BOCHS_TYPE) &&
           field_is(h + H_SUBTYPE, 16, BOCHS_SUBTYPE) &&
           (version == BOCHS_V1 || version == BOCHS_V2);
}

static int bochs_probe(const uint8_t *buf, int buf_size, const char *filename)
{
    (void)filename;
    return buf_size >= BOCHS_HEADER_SIZE && bochs_header_ok(buf) ? 100 : 0;
}

static void bochs_close(BlockNode *bs)
{
    BochsState *s = bs->opaque;
    g_free(s->catalog);
    s->catalog = NULL;
}

/* Reading the header and catalog needs a coroutine. */
typedef struct {
    BlockNode *bs;
    GError **errp;
    int ret;
} OpenCo;

static int coroutine_fn bochs_do_open(BlockNode *bs, GError **errp)
{
    BochsState *s = bs->opaque;
    uint8_t h[BOCHS_HEADER_SIZE];
    int ret;

    ret = child_co_pread(bs->file, 0, sizeof(h), h, 0);
    if (ret < 0) {
        error_setg_errno(errp, -ret, "Could not read the header");
        return ret;
    }
    if (!bochs_header_ok(h)) {
        error_setg(errp, "Image not in Bochs format");
        return -EINVAL;
    }
    s->size = le64_at(h + (le32_at(h + H_VERSION) == BOCHS_V1 ? H_DISK_V1
                                                               : H_DISK_V2));
    /* Whole sectors, as QEMU counts the disk. */
    s->size &= ~(uint64_t)511;

    s->catalog_size = le32_at(h + H_CATALOG);
    if (s->catalog_size > BOCHS_MAX_CATALOG) {
        error_setg(errp, "Catalog size is too large");
        return -EFBIG;
    }
    s->catalog = g_try_new(uint32_t, MAX(s->catalog_size, 1));
    if (!s->catalog) {
        error_setg(errp, "Could not allocate memory for catalog");
        return -ENOMEM;
    }
    uint32_t header_len = le32_at(h + H_HEADER);
    if (s->catalog_size) {
        ret = child_co_pread(bs->file, header_len,
                             (int64_t)s->catalog_size * 4, s->catalog, 0);
        if (ret < 0) {
            error_setg_errno(errp, -ret, "Could not read the catalog");
            return ret;
        }
    }
    for (uint32_t i = 0; i < s->catalog_size; i++) {
        s->catalog[i] = le32_at((const uint8_t *)&s->catalog[i]);
    }
    s->data_offset = header_len + (uint64_t)s->catalog_size * 4;

    /* QEMU's arithmetic, 32-bit wrap of an empty bitmap included. */
    s->bitmap_blocks = 1 + (le32_at(h + H_BITMAP) - 1) / 512;
    s->extent_blocks = 1 + (le32_at(h + H_EXTENT) - 1) / 512;
    s->extent_size = le32_at(h + H_EXTENT);
    if (s->extent_size < 512) {
        error_setg(errp, "Extent size must be at least 512");
        return -EINVAL;
    }
    if (s->extent_size & (s->extent_size - 1)) {
        error_setg(errp, "Extent size %" PRIu32 " is not a power of two",
                   s->extent_size);
        return -EINVAL;
    }
    if (s->extent_size > BOCHS_MAX_EXTENT) {
        error_setg(errp, "Extent size %" PRIu32 " is too large",
                   s->extent_size);
        return -EINVAL;
    }
    if (s->catalog_size < DIV_ROUND_UP(s->size / 512, s->extent_size / 512)) {
        error_setg(errp, "Catalog size is too small for this disk size");
        return -EINVAL;
    }
    return 0;
}

static void coroutine_fn bochs_open_co(void *opaque)
{
    OpenCo *o = opaque;
    o->ret = bochs_do_open(o->bs, o->errp);
}

static int bochs_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    /* Nothing here can be written: read-only, or refused (QEMU's rule). */
    if (flags & NODE_O_RDWR) {
        if (!bs->auto_read_only) {
            error_setg(errp, "Image is read-only");
            return -EACCES;
        }
        bs->read_only = true;
        bs->open_flags &= ~NODE_O_RDWR;
    }
    bs->file = node_open_child(bs, options, "file",
                               CHILD_ROLE_IMAGE | CHILD_ROLE_PRIMARY, false,
                               errp);
    if (!bs->file) {
        return -EINVAL;
    }
    OpenCo o = { .bs = bs, .errp = errp };
    if (in_coroutine()) {
        bochs_open_co(&o);
    } else {
        co_run_sync(bochs_open_co, &o);
    }
    if (o.ret < 0) {
        bochs_close(bs);        /* a failed open is not closed */
    }
    return o.ret;
}

static void bochs_refresh_limits(BlockNode *bs)
{
    bs->bl.request_alignment = 512;
}

/* Where sector `sector` is stored in the file, or 0 if it is not. */
static int64_t coroutine_fn sector_offset(BlockNode *bs, uint64_t sector)
{
    BochsState *s = bs->opaque;
    uint64_t offset = sector * 512;
    uint64_t extent = offset / s->extent_size;
    uint64_t in_extent = (offset % s->extent_size) / 512;
    uint8_t bits;

    if (s->catalog[extent] == BOCHS_NO_BLOCK) {
        return 0;
    }
    uint64_t block = s->data_offset + 512ull * s->catalog[extent] *
                     (s->extent_blocks + s->bitmap_blocks);
    int ret = child_co_pread(bs->file, (int64_t)(block + in_extent / 8), 1,
                             &bits, 0);
    if (ret < 0) {
        return ret;
    }
    if (!((bits >> (in_extent % 8)) & 1)) {
        return 0;
    }
    return (int64_t)(block + 512ull * (s->bitmap_blocks + in_extent));
}

static int coroutine_fn bochs_co_preadv(BlockNode *bs, int64_t offset,
                                        int64_t bytes, IOVec *qiov,
                                        size_t qiov_offset, int flags)
{
    (void)flags;
    for (int64_t done = 0; done < bytes; done += 512) {
        int64_t at = sector_offset(bs, (uint64_t)(offset + done) / 512);
        if (at < 0) {
            return (int)at;
        }
        if (at) {
            int ret = child_co_preadv(bs->file, at, 512, qiov,
                                      qiov_offset + (size_t)done, 0);
            if (ret < 0) {
                return ret;
            }
        } else {
            iov_memset(qiov->iov, qiov->niov, qiov_offset + (size_t)done, 0,
                       512);
        }
    }
    return 0;
}

static int64_t bochs_getlength(BlockNode *bs)
{
    BochsState *s = bs->opaque;
    return (int64_t)s->size;
}

const BlockDriver bdrv_bochs = {
    .format_name = "bochs",
    .instance_size = sizeof(BochsState),
    .is_format = true,
    .probe = bochs_probe,
    .open = bochs_open,
    .close = bochs_close,
    .refresh_limits = bochs_refresh_limits,
    .child_perm = node_default_perms,
    .co_preadv = bochs_co_preadv,
    .getlength = bochs_getlength,
};
