/*
 * Device state streams inside a VM state area (migration/vmstate-
 * devices.c): what snapshot-save stores after the RAM blocks and
 * snapshot-load hands back to the back ends (docs/migration.md "Device
 * state in snapshot-save's VM state").  Internal to migration/: the RAM
 * layout (vmstate-ram.c) places them, the unit test and the fuzz target
 * reach the parser without a node.
 */
#ifndef STRATA_VMSTATE_DEVICES_H
#define STRATA_VMSTATE_DEVICES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <glib.h>

#include "strata/block.h"
#include "strata/coroutine.h"
#include "strata/device-state.h"
#include "strata/error.h"

#define VMSTATE_DEV_MAGIC 0x53444556u       /* "SDEV" */
#define VMSTATE_DEV_FIXED 8                 /* magic, id length, flags, 0 */
#define VMSTATE_DEV_ITERATIVE 0x01
/* data bytes per chunk; a save fills each chunk as far as it can */
#define VMSTATE_DEV_CHUNK (1u << 20)
/* ids a message names before "and N more" */
#define VMSTATE_DEV_NAMED 3
/* the smallest section: fixed part, a 1-byte id, the 0, the CRC */
#define VMSTATE_DEV_MIN (VMSTATE_DEV_FIXED + 1 + 4 + 4)

/*
 * An iterative stream's records (u32 big-endian length > 0, bytes; a u32 0
 * ends a round), followed byte by byte: a stream may only end between
 * rounds.
 */
typedef struct VmstateRecords {
    uint8_t hdr[4];
    unsigned got;               /* bytes of the current length seen */
    uint32_t left;              /* bytes of the current record to come */
    bool in_round;              /* a record came, the round's 0 not yet */
    uint64_t rounds;            /* 0s seen */
} VmstateRecords;

void vmstate_records_feed(VmstateRecords *w, const uint8_t *p, size_t n);
bool vmstate_records_at_boundary(const VmstateRecords *w);

/* One stream of a state, as the parser found it. */
typedef struct VmstateDevDesc {
    char *id;
    bool iterative;
    uint64_t data;              /* offset of the first chunk's length */
    uint64_t bytes;             /* state bytes (the chunks' data) */
    uint64_t rounds;            /* iterative: rounds */
} VmstateDevDesc;

/* Reads len bytes at pos of the state into buf: 0 or -errno. */
typedef int VmstateReadFn(void *opaque, void *buf, size_t len, uint64_t pos);

/*
 * Walks the @count streams that lie in [@off, @end) of a state and checks
 * every byte of them (framing, ids, CRC-32s, an iterative stream's
 * rounds): an array of VmstateDevDesc, or NULL with errp set.  Memory use
 * does not depend on the states' sizes, nor the time on their count
 * beyond the sections' own bytes.  A load hands each stream to a back
 * end of @backends (NULL: no bound, the parse alone): a count larger than
 * they are is refused before the sections are walked, the message naming
 * a few streams without one.  @cancel (may be NULL) stops the walk.
 */
GPtrArray *vmstate_dev_parse(VmstateReadFn *rd, void *opaque, uint64_t off,
                             uint64_t end, uint32_t count, DsSet *backends,
                             atomic_bool *cancel, GError **errp);

/*
 * Save: every stream of @set, in its order, from @pos on; each is read
 * from its back end until EOF.  The offset where the last one ends, or
 * -errno with errp set (the stream that failed is DS_FAILED).
 */
int64_t coroutine_fn vmstate_dev_save(BlockNode *bs, DsSet *set,
                                      uint64_t pos, atomic_bool *cancel,
                                      GError **errp);

/*
 * Load, before anything is touched: every stream of @descs must have a
 * back end in @set (same id).
 */
bool vmstate_dev_match(GPtrArray *descs, DsSet *set, GError **errp);
/*
 * Load, once it handed every state back: streams of @set the state lacks
 * (@descs NULL: all) become DS_NOT_IN_FILE.  A load that failed leaves
 * them as they were (still registered, no warning).
 */
void vmstate_dev_mark_absent(GPtrArray *descs, DsSet *set);

/*
 * Load: every stream of @descs handed to its back end (in @set), in the
 * state's order, and its descriptor closed.  On failure the message says
 * which streams were handed back, which in part and which not.  0 or
 * -errno.
 */
int coroutine_fn vmstate_dev_load(BlockNode *bs, GPtrArray *descs,
                                  DsSet *set, atomic_bool *cancel,
                                  GError **errp);

#endif
