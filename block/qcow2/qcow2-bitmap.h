/*
 * Persistent dirty bitmaps in qcow2 (qcow2-bitmap.c): the bitmaps header
 * extension, the bitmap directory and the bitmap tables, loaded into the
 * node's dirty bitmaps at open and stored back at close.
 */
#ifndef STRATA_QCOW2_BITMAP_H
#define STRATA_QCOW2_BITMAP_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/block-driver.h"
#include "strata/coroutine.h"

/* QEMU's limits: bitmaps in one image, bytes of directory. */
#define QCOW2_MAX_BITMAPS 65535
#define QCOW2_MAX_BITMAP_DIRECTORY_SIZE (1024u * QCOW2_MAX_BITMAPS)

/*
 * At open: make a dirty bitmap for each bitmap of the directory (data
 * loaded unless it is in use: then it is inconsistent).  Writable: the
 * bitmaps are marked in use in the image (*header_updated: the header was
 * rewritten).  Read-only: they are read-only.  A directory that cannot be
 * read fails a writable open with QEMU's message; a read-only one (or a
 * check) opens without bitmaps and a warning.
 */
int coroutine_fn qcow2_load_dirty_bitmaps(BlockNode *bs, int flags,
                                          bool *header_updated,
                                          GError **errp);
/*
 * Write every changed persistent bitmap to the image (new tables, a new
 * directory, then the old tables freed) and clear their in-use flags;
 * release: drop the stored bitmaps from the node afterwards.
 */
bool coroutine_fn qcow2_store_persistent_dirty_bitmaps(BlockNode *bs,
                                                       bool release,
                                                       GError **errp);
/* Reopen read-only (store, then read-only) and read-write (in use). */
int coroutine_fn qcow2_reopen_bitmaps_ro(BlockNode *bs, GError **errp);
int coroutine_fn qcow2_reopen_bitmaps_rw(BlockNode *bs, GError **errp);
/* Resize: every bitmap of the image must be loaded and usable. */
int coroutine_fn qcow2_truncate_bitmaps_check(BlockNode *bs, GError **errp);

bool qcow2_supports_persistent_dirty_bitmap(BlockNode *bs);
bool coroutine_fn qcow2_co_can_store_new_dirty_bitmap(BlockNode *bs,
                                                      const char *name,
                                                      uint32_t granularity,
                                                      GError **errp);
int coroutine_fn qcow2_co_remove_persistent_dirty_bitmap(BlockNode *bs,
                                                         const char *name,
                                                         GError **errp);
/*
 * The "bitmaps" member of the format-specific information, as read from
 * the directory (NULL: no bitmaps, or a directory that cannot be read).
 */
json_t *qcow2_bitmap_info(BlockNode *bs);
#endif
