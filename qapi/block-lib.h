/*
 * The block library's public headers for QMP handlers.  A few library
 * types share their names with QAPI's generated ones (PreallocMode,
 * SnapshotInfo); they are renamed here so that a handler can include both
 * (it means QAPI's when it writes the plain name).  Include this before
 * any qapi-*.h header.
 */
#ifndef QAPI_BLOCK_LIB_H
#define QAPI_BLOCK_LIB_H

#define PreallocMode LibPreallocMode
#define SnapshotInfo LibSnapshotInfo
#include "strata/backend.h"
#include "strata/block-events.h"
#include "strata/block-ops.h"
#include "strata/block.h"
#undef PreallocMode
#undef SnapshotInfo

#endif
