/*
 * libFuzzer target: the head of a VM state that snapshot-load reads from
 * an image (migration/vmstate-ram.c).  The input is the state's first
 * bytes; the area it claims to live in is the input's length, or (first
 * byte odd) 1 TiB, so that offsets far past the input are tried too.
 * Whatever the bytes, the parser answers a layout whose every region lies
 * inside the area, or an error: never a crash or a sanitizer report.
 * Seeds: tests/fuzz/corpus/vmstate-ram (states strata saved).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../migration/vmstate-ram-int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
    }
    vmstate_ram_layout_free(l);
    return 0;
}
