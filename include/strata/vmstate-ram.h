/*
 * Guest RAM in a node's VM state area: what snapshot-save stores beside
 * the disks' internal snapshots and snapshot-load puts back.
 *
 * The layout (docs/migration.md, "RAM in a VM state area") follows the
 * mapped-ram idea inside the area: a header naming every RAM block, then
 * per block a bitmap of stored pages and a page region where page i lives
 * at pages_offset + i * page_size.  Zero pages are never written, so the
 * area stays as sparse as the guest's memory; a load reads only the pages
 * the bitmap names and zeroes the others.  Every request is large and
 * aligned, straight from or into the guest's memory (no bounce copy).
 */
#ifndef STRATA_VMSTATE_RAM_H
#define STRATA_VMSTATE_RAM_H

#include <stdint.h>

#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/error.h"

/*
 * Writes every registered RAM block into bs's VM state area from offset 0.
 * Returns the size of the state (> 0: a header even without RAM blocks)
 * or -errno with errp set.
 */
int64_t coroutine_fn vmstate_ram_save(BlockNode *bs, GError **errp);

/*
 * Reads a state that vmstate_ram_save wrote (size bytes, as the snapshot
 * recorded it) into the RAM blocks whose ids match.  A block the state
 * names that is not registered, or whose size differs, fails the load
 * before any memory changes.  0 or -errno with errp set.
 */
int coroutine_fn vmstate_ram_load(BlockNode *bs, int64_t size, GError **errp);

#endif
