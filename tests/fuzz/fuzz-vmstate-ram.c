/*
 * libFuzzer target: the head of a VM state that snapshot-load reads from
 * an image (migration/vmstate-ram.c), and the device state sections after
 * its RAM part (migration/vmstate-devices.c).  The input is the state's
 * first bytes; the area it claims to live in is the input's length, or
 * (first byte odd) 1 TiB, so that offsets far past the input are tried
 * too (reads there fail as a failing image would); with bit 1 of the
 * first byte set, the last byte is the count of back ends a load has (a
 * state with more streams is refused unwalked).  Whatever the bytes,
 * the parsers answer a layout whose every region lies inside the area,
 * streams that lie inside the state, or an error: never a crash or a
 * sanitizer report.  Seeds: tests/fuzz/corpus/vmstate-ram (states strata
 * saved; "devices": two streams, one of them iterative).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../migration/vmstate-devices.h"
#include "../../migration/vmstate-ram-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct Input {
    const uint8_t *data;
    size_t size;
} Input;

static int input_read(void *opaque, void *buf, size_t len, uint64_t pos)
{
    const Input *in = opaque;
    if (pos > in->size || len > in->size - pos) {
        return -EIO;
    }
    memcpy(buf, in->data + pos, len);
    return 0;
}

static void devices(const uint8_t *data, size_t size,
                    const VmstateRamLayout *l)
{
    Input in = { data, size };
    GError *err = NULL;
    /* a load's back ends: as many as the last byte says when the first
     * byte has bit 1 set (the seeds' ids first), else no bound */
    DsSet *backends = NULL;
    if (size && (data[0] & 2)) {
        static const char *const ids[] = { "empty", "one", "mid", "iter" };
        backends = ds_set_new();
        for (unsigned i = 0; i < data[size - 1]; i++) {
            char id[16];
            snprintf(id, sizeof(id), "d%u", i);
            ds_set_add(backends, i < 4 ? ids[i] : id, -1, false);
        }
    }
    GPtrArray *descs = vmstate_dev_parse(input_read, &in, l->dev_offset,
                                         l->size, l->ndev, backends, NULL,
                                         &err);
    unsigned nb = backends ? ds_set_count(backends) : 0;
    ds_set_free(backends);
    if (!descs) {
        if (!err) {
            abort();
        }
        g_error_free(err);
        return;
    }
    uint64_t total = 0;
    for (guint i = 0; i < descs->len; i++) {
        const VmstateDevDesc *d = descs->pdata[i];
        total += d->bytes;
        if (d->data < l->dev_offset || d->data > l->size ||
            d->bytes > l->size - d->data || strlen(d->id) == 0 ||
            (!d->iterative && d->rounds)) {
            abort();
        }
    }
    if (descs->len != l->ndev || total > l->size - l->dev_offset ||
        (nb && descs->len > nb)) {
        abort();
    }
    g_ptr_array_free(descs, true);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    GError *err = NULL;
    int64_t area = size && (data[0] & 1) ? (int64_t)1 << 40 : (int64_t)size;
    VmstateRamLayout *l = vmstate_ram_parse(data, size, area, &err);

    if (!l) {
        if (!err) {
            abort();                    /* a refusal must say why */
        }
        g_error_free(err);
        return 0;
    }
    for (unsigned i = 0; i < l->nblocks; i++) {
        const VmstateRamBlockDesc *d = &l->blocks[i];
        if (d->pages_offset + d->size > l->size ||
            d->bitmap_offset + (d->size / d->page_size + 7) / 8 > l->size ||
            l->size > (uint64_t)area) {
            abort();
        }
        if (d->pages_offset + d->size > l->dev_offset) {
            abort();                    /* RAM and devices overlap */
        }
    }
    if (l->dev_offset > l->size) {
        abort();
    }
    devices(data, size, l);
    vmstate_ram_layout_free(l);
    return 0;
}
