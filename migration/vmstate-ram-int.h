/*
 * The parser of a VM state's RAM layout (migration/vmstate-ram.c), apart
 * so that the fuzz target reaches it without a node.
 */
#ifndef STRATA_VMSTATE_RAM_INT_H
#define STRATA_VMSTATE_RAM_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/error.h"

typedef struct VmstateRamBlockDesc {
    char *id;
    uint64_t size;
    uint64_t bitmap_offset;
    uint64_t pages_offset;
    uint32_t page_size;
} VmstateRamBlockDesc;

typedef struct VmstateRamLayout {
    uint64_t size;                  /* of the whole state */
    uint32_t version;               /* 1: RAM only, 2: device state too */
    uint64_t dev_offset;            /* device state sections, up to size */
    uint32_t ndev;                  /* streams */
    unsigned nblocks;
    VmstateRamBlockDesc *blocks;
} VmstateRamLayout;

/*
 * The 64-byte header of a state in an area of area_size bytes: the number
 * of blocks and how far to read to have every descriptor.
 */
bool vmstate_ram_parse_header(const uint8_t *buf, size_t len,
                              int64_t area_size, uint32_t *nblocks,
                              uint64_t *desc_end, GError **errp);
/* Header and descriptors (buf: the state from offset 0, len bytes of it). */
VmstateRamLayout *vmstate_ram_parse(const uint8_t *buf, size_t len,
                                    int64_t area_size, GError **errp);
void vmstate_ram_layout_free(VmstateRamLayout *l);

#endif
