/*
 * Guest RAM in a node's VM state area (strata/vmstate-ram.h).
 *
 * Layout, big-endian, offsets from the start of the area:
 *
 *   0    header (64 bytes): magic "STRATAVM", u32 version (2),
 *        u32 number of blocks, u64 size of the whole state, u64 offset of
 *        the descriptors (64), u64 offset of the device state sections,
 *        u32 number of device state streams, zeroes
 *   64   one descriptor per block, 8-byte aligned each: u64 size,
 *        u64 bitmap offset, u64 pages offset, u32 page size, u16 id length,
 *        u16 zero, the id (no NUL), zeroes to the next multiple of 8
 *   ...  per block its bitmap (bit i of byte i / 8, least significant
 *        first: page i is stored), 4 KiB aligned, and its page region,
 *        1 MiB aligned, page i at pages offset + i * page size
 *   ...  from the device state offset to the end of the state, the device
 *        state streams (vmstate-devices.c), one section each
 *
 * Version 1 (strata before device state) is the same without the device
 * state fields (zeroes there): it still loads, as a state without
 * streams.  Always written: version 2.
 *
 * The header is written last, so a state cut short by a failure never
 * looks complete; the snapshot that records the state's size is taken
 * only after all of it is written (qapi/cmd-snapshot-job.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include <glib.h>

#include "strata/iov.h"
#include "strata/ram-block.h"
#include "strata/vmstate-ram.h"
#include "vmstate-devices.h"
#include "vmstate-bytes.h"
#include "vmstate-ram-int.h"

#define VMSTATE_RAM_MAGIC "STRATAVM"
#define VMSTATE_RAM_VERSION 2
#define VMSTATE_RAM_VERSION_RAM_ONLY 1
#define HEADER_SIZE 64
#define DESC_FIXED 32
#define BITMAP_ALIGN 4096
#define PAGES_ALIGN (1 << 20)
/* One request moves at most this much; several are in flight. */
#define MAX_REQUEST (8 << 20)
#define WORKERS 8

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

static size_t desc_size(size_t id_len)
{
    return align_up(DESC_FIXED + id_len, 8);
}

static uint64_t bitmap_bytes(uint64_t pages)
{
    return (pages + 7) / 8;
}

static inline bool bit_test(const uint8_t *map, uint64_t i)
{
    return map[i / 8] & (1u << (i % 8));
}

/* ---- Parsing (pure: also the fuzz target's entry point) ---- */

void vmstate_ram_layout_free(VmstateRamLayout *l)
{
    if (!l) {
        return;
    }
    for (unsigned i = 0; i < l->nblocks; i++) {
        g_free(l->blocks[i].id);
    }
    g_free(l->blocks);
    g_free(l);
}

bool vmstate_ram_parse_header(const uint8_t *buf, size_t len,
                              int64_t area_size, uint32_t *nblocks,
                              uint64_t *desc_end, GError **errp)
{
    if (len < HEADER_SIZE || area_size < HEADER_SIZE ||
        memcmp(buf, VMSTATE_RAM_MAGIC, 8)) {
        error_setg(errp, "The VM state is not one strata saved (no "
                   "'" VMSTATE_RAM_MAGIC "' header)");
        return false;
    }
    if (get_be32(buf + 8) != VMSTATE_RAM_VERSION &&
        get_be32(buf + 8) != VMSTATE_RAM_VERSION_RAM_ONLY) {
        error_setg(errp, "Unsupported VM state version %" PRIu32,
                   get_be32(buf + 8));
        return false;
    }
    uint32_t n = get_be32(buf + 12);
    uint64_t size = get_be64(buf + 16);
    uint64_t desc = get_be64(buf + 24);
    /* Every descriptor takes at least DESC_FIXED + 8 bytes. */
    if (size < HEADER_SIZE || size > (uint64_t)area_size ||
        desc != HEADER_SIZE ||
        n > (size - desc) / (DESC_FIXED + 8)) {
        error_setg(errp, "The VM state's header is damaged (%" PRIu32
                   " blocks, %" PRIu64 " bytes in an area of %" PRId64 ")",
                   n, size, area_size);
        return false;
    }
    *nblocks = n;
    /* The descriptors end before this (an upper bound to read). */
    *desc_end = MIN(size, desc + (uint64_t)n * desc_size(RAM_BLOCK_MAX_ID));
    return true;
}

VmstateRamLayout *vmstate_ram_parse(const uint8_t *buf, size_t len,
                                    int64_t area_size, GError **errp)
{
    uint32_t n;
    uint64_t desc_end;

    if (!vmstate_ram_parse_header(buf, len, area_size, &n, &desc_end,
                                  errp)) {
        return NULL;
    }
    /*
     * The header's count is only checked against the area; the buffer may
     * be shorter, and an 85-byte input claiming millions of blocks must
     * not make us allocate for them (the loop below would stop at the
     * buffer's end anyway).
     */
    if (n > (len - HEADER_SIZE) / (DESC_FIXED + 8)) {
        error_setg(errp, "The VM state's block descriptors are damaged");
        return NULL;
    }
    VmstateRamLayout *l = g_new0(VmstateRamLayout, 1);
    l->size = get_be64(buf + 16);
    l->version = get_be32(buf + 8);
    if (l->version == VMSTATE_RAM_VERSION_RAM_ONLY) {
        l->dev_offset = l->size;
    } else {
        l->dev_offset = get_be64(buf + 32);
        l->ndev = get_be32(buf + 40);
    }
    l->blocks = g_new0(VmstateRamBlockDesc, n);
    size_t off = HEADER_SIZE;
    /* Where the descriptors end: nothing else may start before. */
    for (uint32_t i = 0; i < n; i++) {
        VmstateRamBlockDesc *d = &l->blocks[i];
        if (len < DESC_FIXED || off > len - DESC_FIXED) {
            goto damaged;
        }
        const uint8_t *p = buf + off;
        d->size = get_be64(p);
        d->bitmap_offset = get_be64(p + 8);
        d->pages_offset = get_be64(p + 16);
        d->page_size = get_be32(p + 24);
        uint16_t id_len = get_be16(p + 28);
        if (id_len == 0 || id_len > RAM_BLOCK_MAX_ID ||
            off + desc_size(id_len) > len) {
            goto damaged;
        }
        d->id = g_strndup((const char *)p + DESC_FIXED, id_len);
        l->nblocks = i + 1;
        if (strlen(d->id) != id_len) {
            goto damaged;               /* a NUL inside the id */
        }
        off += desc_size(id_len);
    }
    for (uint32_t i = 0; i < n; i++) {
        VmstateRamBlockDesc *d = &l->blocks[i];
        uint64_t ps = d->page_size;
        if (ps < 512 || ps > (1u << 30) || (ps & (ps - 1)) ||
            d->size == 0 || d->size % ps) {
            goto damaged;
        }
        uint64_t pages = d->size / ps;
        if (d->bitmap_offset < off ||
            d->bitmap_offset > l->size ||
            bitmap_bytes(pages) > l->size - d->bitmap_offset ||
            d->pages_offset < off || d->pages_offset % ps ||
            d->pages_offset > l->size ||
            d->size > l->size - d->pages_offset) {
            goto damaged;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (!strcmp(l->blocks[j].id, d->id)) {
                goto damaged;           /* one id twice */
            }
        }
    }
    /* The device state comes after everything of the RAM part. */
    uint64_t ram_end = off;
    for (uint32_t i = 0; i < n; i++) {
        VmstateRamBlockDesc *d = &l->blocks[i];
        ram_end = MAX(ram_end, d->pages_offset + d->size);
        ram_end = MAX(ram_end, d->bitmap_offset +
                               bitmap_bytes(d->size / d->page_size));
    }
    if (l->dev_offset < ram_end || l->dev_offset > l->size ||
        (l->ndev == 0 && l->dev_offset != l->size)) {
        error_setg(errp, "The VM state's header is damaged (device state at "
                   "%" PRIu64 ", the RAM part ends at %" PRIu64 ", the state "
                   "at %" PRIu64 ")", l->dev_offset, ram_end, l->size);
        vmstate_ram_layout_free(l);
        return NULL;
    }
    return l;

damaged:
    error_setg(errp, "The VM state's block descriptors are damaged");
    vmstate_ram_layout_free(l);
    return NULL;
}

/* ---- Parallel requests between guest memory and the area ---- */

typedef struct Run {
    uint8_t *host;
    uint64_t pos;                   /* in the area */
    uint64_t len;
} Run;

typedef struct RunQueue {
    BlockNode *bs;
    bool write;
    GArray *runs;                   /* Run */
    guint next;
    int active;
    int ret;
    Coroutine *waiter;
} RunQueue;

static void coroutine_fn run_worker(void *opaque)
{
    RunQueue *q = opaque;

    while (q->ret == 0 && q->next < q->runs->len) {
        Run *r = &g_array_index(q->runs, Run, q->next++);
        IOVec v;
        iovec_init_buf(&v, r->host, r->len);
        int ret = q->write ? node_co_save_vmstate(q->bs, &v, r->pos)
                           : node_co_load_vmstate(q->bs, &v, r->pos);
        iovec_destroy(&v);
        if (ret < 0 && q->ret == 0) {
            q->ret = ret;
        }
    }
    if (--q->active == 0 && q->waiter) {
        co_wake(q->waiter);
    }
}

/* Runs of set bits of map (pages of rb), cut at MAX_REQUEST. */
static void add_runs(GArray *runs, RamBlock *rb, const uint8_t *map,
                     uint64_t pages_offset)
{
    uint64_t pages = ram_block_pages(rb);
    uint64_t per = MAX(MAX_REQUEST / rb->page_size, 1);

    for (uint64_t i = 0; i < pages;) {
        if (!bit_test(map, i)) {
            i++;
            continue;
        }
        uint64_t j = i + 1;
        while (j < pages && j - i < per && bit_test(map, j)) {
            j++;
        }
        Run r = {
            .host = rb->host + i * rb->page_size,
            .pos = pages_offset + i * rb->page_size,
            .len = (j - i) * rb->page_size,
        };
        g_array_append_val(runs, r);
        i = j;
    }
}

static int coroutine_fn run_all(BlockNode *bs, bool write, GArray *runs)
{
    RunQueue q = { .bs = bs, .write = write, .runs = runs };
    int n = MIN(WORKERS, (int)runs->len);

    q.active = n;
    for (int i = 0; i < n; i++) {
        co_enter(co_create(run_worker, &q));
    }
    if (q.active > 0) {
        q.waiter = co_self();
        while (q.active > 0) {
            co_yield();
        }
    }
    return q.ret;
}

static int coroutine_fn write_buf(BlockNode *bs, void *buf, size_t len,
                                  uint64_t pos)
{
    IOVec v;
    iovec_init_buf(&v, buf, len);
    int ret = node_co_save_vmstate(bs, &v, pos);
    iovec_destroy(&v);
    return ret;
}

static int coroutine_fn read_buf(BlockNode *bs, void *buf, size_t len,
                                 uint64_t pos)
{
    IOVec v;
    iovec_init_buf(&v, buf, len);
    int ret = node_co_load_vmstate(bs, &v, pos);
    iovec_destroy(&v);
    return ret;
}

/* ---- Save ---- */

int64_t coroutine_fn vmstate_ram_save(BlockNode *bs, DsSet *devs,
                                      atomic_bool *cancel, GError **errp)
{
    unsigned n = ram_block_count();
    RamBlock **rbs = g_new0(RamBlock *, n ? n : 1);
    uint64_t *bitmap_off = g_new0(uint64_t, n ? n : 1);
    uint64_t *pages_off = g_new0(uint64_t, n ? n : 1);
    uint8_t **maps = g_new0(uint8_t *, n ? n : 1);
    GArray *runs = g_array_new(false, false, sizeof(Run));
    uint64_t off = HEADER_SIZE;
    unsigned i = 0;
    int64_t ret;

    for (RamBlock *rb = ram_block_first(); rb; rb = ram_block_next(rb)) {
        /* held while the job yields: object-del must not unmap them */
        ram_block_ref(rb);
        rbs[i++] = rb;
        off += desc_size(strlen(rb->id));
    }
    size_t desc_len = off;
    for (i = 0; i < n; i++) {
        off = align_up(off, BITMAP_ALIGN);
        bitmap_off[i] = off;
        off += bitmap_bytes(ram_block_pages(rbs[i]));
    }
    for (i = 0; i < n; i++) {
        off = align_up(off, MAX(PAGES_ALIGN, rbs[i]->page_size));
        pages_off[i] = off;
        off += rbs[i]->size;
    }
    uint64_t size = off;

    /* Which pages hold anything: only those are written. */
    for (i = 0; i < n; i++) {
        RamBlock *rb = rbs[i];
        uint64_t pages = ram_block_pages(rb);
        maps[i] = g_malloc0(bitmap_bytes(pages));
        for (uint64_t p = 0; p < pages; p++) {
            if (!buffer_is_zero(rb->host + p * rb->page_size,
                                rb->page_size)) {
                maps[i][p / 8] |= 1u << (p % 8);
            }
        }
        add_runs(runs, rb, maps[i], pages_off[i]);
    }

    ret = run_all(bs, true, runs);
    for (i = 0; i < n && ret == 0; i++) {
        ret = write_buf(bs, maps[i],
                        bitmap_bytes(ram_block_pages(rbs[i])), bitmap_off[i]);
    }
    bool said = false;
    uint64_t dev_offset = size;
    if (ret == 0) {
        /* after the RAM, as QEMU's savevm puts the devices after it */
        int64_t end = vmstate_dev_save(bs, devs, dev_offset, cancel, errp);
        if (end < 0) {
            ret = end;
            said = true;
        } else {
            size = (uint64_t)end;
        }
    }
    if (ret == 0) {
        uint8_t *head = g_malloc0(desc_len);
        memcpy(head, VMSTATE_RAM_MAGIC, 8);
        put_be32(head + 8, VMSTATE_RAM_VERSION);
        put_be32(head + 12, n);
        put_be64(head + 16, size);
        put_be64(head + 24, HEADER_SIZE);
        put_be64(head + 32, dev_offset);
        put_be32(head + 40, devs ? ds_set_count(devs) : 0);
        size_t p = HEADER_SIZE;
        for (i = 0; i < n; i++) {
            size_t id_len = strlen(rbs[i]->id);
            put_be64(head + p, rbs[i]->size);
            put_be64(head + p + 8, bitmap_off[i]);
            put_be64(head + p + 16, pages_off[i]);
            put_be32(head + p + 24, rbs[i]->page_size);
            put_be16(head + p + 28, id_len);
            memcpy(head + p + DESC_FIXED, rbs[i]->id, id_len);
            p += desc_size(id_len);
        }
        ret = write_buf(bs, head, desc_len, 0);
        g_free(head);
    }
    if (ret < 0 && !said) {
        error_setg(errp, "Failed to save the VM state: %s",
                   g_strerror((int)-ret));
    } else if (ret == 0) {
        ret = (int64_t)size;
    }

    for (i = 0; i < n; i++) {
        g_free(maps[i]);
        ram_block_unref(rbs[i]);
    }
    g_free(maps);
    g_free(rbs);
    g_free(bitmap_off);
    g_free(pages_off);
    g_array_free(runs, true);
    return ret;
}

/* ---- Load ---- */

/* Pages the state does not store are zero: make them so (only if not). */
static void zero_unstored(RamBlock *rb, const uint8_t *map)
{
    uint64_t pages = ram_block_pages(rb);
    for (uint64_t p = 0; p < pages; p++) {
        uint8_t *page = rb->host + p * rb->page_size;
        if (!bit_test(map, p) && !buffer_is_zero(page, rb->page_size)) {
            memset(page, 0, rb->page_size);
        }
    }
}

static int area_read(void *opaque, void *buf, size_t len, uint64_t pos)
{
    return read_buf(opaque, buf, len, pos);
}

int coroutine_fn vmstate_ram_load(BlockNode *bs, int64_t size, DsSet *devs,
                                  atomic_bool *cancel, bool *about_devices,
                                  GError **errp)
{
    uint8_t head[HEADER_SIZE];
    uint32_t n;
    uint64_t desc_end;
    int ret;

    *about_devices = false;
    ret = read_buf(bs, head, sizeof(head), 0);
    if (ret < 0) {
        error_setg(errp, "Failed to read the VM state: %s", g_strerror(-ret));
        return ret;
    }
    if (!vmstate_ram_parse_header(head, sizeof(head), size, &n, &desc_end,
                                  errp)) {
        return -EINVAL;
    }
    size_t len = desc_end;
    uint8_t *buf = g_malloc(len);
    ret = read_buf(bs, buf, len, 0);
    if (ret < 0) {
        g_free(buf);
        error_setg(errp, "Failed to read the VM state: %s", g_strerror(-ret));
        return ret;
    }
    VmstateRamLayout *l = vmstate_ram_parse(buf, len, size, errp);
    g_free(buf);
    if (!l) {
        return -EINVAL;
    }

    /* Every block must fit before any memory changes. */
    RamBlock **rbs = g_new0(RamBlock *, l->nblocks ? l->nblocks : 1);
    uint8_t **maps = g_new0(uint8_t *, l->nblocks ? l->nblocks : 1);
    GArray *runs = g_array_new(false, false, sizeof(Run));
    ret = 0;
    for (unsigned i = 0; i < l->nblocks && ret == 0; i++) {
        VmstateRamBlockDesc *d = &l->blocks[i];
        rbs[i] = ram_block_find(d->id);
        if (rbs[i]) {
            ram_block_ref(rbs[i]);   /* held while the job yields */
        }
        if (!rbs[i]) {
            error_setg(errp, "Unknown ramblock \"%s\", cannot accept "
                       "migration", d->id);
            ret = -EINVAL;
        } else if (rbs[i]->size != d->size) {
            error_setg(errp, "Length mismatch: %s: 0x%" PRIx64 " in != 0x%"
                       PRIx64 ": Invalid argument", d->id, d->size,
                       rbs[i]->size);
            ret = -EINVAL;
        } else if (rbs[i]->readonly) {
            /* a readonly file backend: nothing may be written, not half */
            error_setg(errp, "RAM block '%s' is read-only, the VM state "
                       "cannot be loaded into it", d->id);
            ret = -EINVAL;
        } else if (rbs[i]->page_size != d->page_size) {
            error_setg(errp, "RAM block '%s' has %" PRIu32 "-byte pages, "
                       "the VM state %" PRIu32 "-byte ones", d->id,
                       rbs[i]->page_size, d->page_size);
            ret = -EINVAL;
        }
    }
    /* Every device state whole and with a back end, as well. */
    GPtrArray *descs = NULL;
    if (ret == 0) {
        /* nothing registered: no stream can be handed back */
        DsSet *none = devs ? NULL : ds_set_new();
        descs = vmstate_dev_parse(area_read, bs, l->dev_offset, l->size,
                                  l->ndev, devs ? devs : none, cancel, errp);
        ds_set_free(none);
        if (!descs || !vmstate_dev_match(descs, devs, errp)) {
            *about_devices = true;
            ret = -EINVAL;
        }
    }
    for (unsigned i = 0; i < l->nblocks && ret == 0; i++) {
        size_t blen = bitmap_bytes(ram_block_pages(rbs[i]));
        maps[i] = g_malloc(blen);
        ret = read_buf(bs, maps[i], blen, l->blocks[i].bitmap_offset);
        if (ret < 0) {
            error_setg(errp, "Failed to read the VM state: %s",
                       g_strerror(-ret));
        }
    }
    for (unsigned i = 0; i < l->nblocks && ret == 0; i++) {
        add_runs(runs, rbs[i], maps[i], l->blocks[i].pages_offset);
        zero_unstored(rbs[i], maps[i]);
    }
    if (ret == 0) {
        ret = run_all(bs, false, runs);
        if (ret < 0) {
            error_setg(errp, "Failed to read the VM state: %s",
                       g_strerror(-ret));
        }
    }
    /* The devices after the RAM, as QEMU loads them. */
    if (ret == 0 && descs->len) {
        ret = vmstate_dev_load(bs, descs, devs, cancel, errp);
        *about_devices = ret < 0;
    }
    if (ret == 0) {
        vmstate_dev_mark_absent(descs, devs);
    }
    if (descs) {
        g_ptr_array_free(descs, true);
    }

    for (unsigned i = 0; i < l->nblocks; i++) {
        g_free(maps[i]);
        if (rbs[i]) {
            ram_block_unref(rbs[i]);
        }
    }
    g_free(maps);
    g_free(rbs);
    g_array_free(runs, true);
    vmstate_ram_layout_free(l);
    return ret;
}
