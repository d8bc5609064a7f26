/*
 * A direct-io save's page regions allocated before the channels write
 * them, and what they did not write given back (prealloc.c).
 */
#ifndef MIGRATION_PREALLOC_H
#define MIGRATION_PREALLOC_H

#include <stdbool.h>

#include "strata/mapped-ram.h"

/*
 * Allocates @b's page region in @fd (unwritten extents: they read as
 * zeros) without changing the file's size.  false where the file system
 * cannot (the save then writes into holes, as before); nothing to undo.
 */
bool mr_prealloc(int fd, const MrBlock *b);

/*
 * Punches out of @b's page region every stretch of pages whose bit in
 * @written is clear, so that the file keeps holes where the save wrote
 * nothing, as it would have without mr_prealloc.  A file system that
 * allocates but cannot punch keeps them allocated (they read as zeros);
 * any other failure is the error a user reads.
 */
bool mr_punch_unwritten(int fd, const MrBlock *b,
                        const unsigned long *written, GError **errp);

#endif
