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
 * After the RAM come the device state streams of the back ends the VM
 * monitor registered (docs/migration.md "Device state in snapshot-save's
 * VM state"), as QEMU's savevm puts its devices after the RAM.
 */
#ifndef STRATA_VMSTATE_RAM_H
#define STRATA_VMSTATE_RAM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/device-state.h"
#include "strata/error.h"

/*
 * Writes every registered RAM block into bs's VM state area from offset 0,
 * then every stream of @devs (NULL: none), each read from its back end
 * until EOF; @cancel (may be NULL) stops a wait for a back end.  Returns
 * the size of the state (> 0: a header even without RAM blocks) or -errno
 * with errp set; a stream that failed is DS_FAILED.
 */
int64_t coroutine_fn vmstate_ram_save(BlockNode *bs, DsSet *devs,
                                      atomic_bool *cancel, GError **errp);

/*
 * Reads a state that vmstate_ram_save wrote (size bytes, as the snapshot
 * recorded it) into the RAM blocks whose ids match, then hands each device
 * state stream to the stream of @devs with its id (its descriptor is
 * closed after it).  A block the state names that is not registered, or
 * whose size differs, a damaged device state section, or a stream no
 * stream of @devs takes fail the load before any memory changes or any
 * back end gets a byte.  Streams of @devs the state lacks become
 * DS_NOT_IN_FILE.  0 or -errno with errp set; *about_devices says the
 * error concerns the device state (the message says what was loaded).
 */
int coroutine_fn vmstate_ram_load(BlockNode *bs, int64_t size, DsSet *devs,
                                  atomic_bool *cancel, bool *about_devices,
                                  GError **errp);

#endif
