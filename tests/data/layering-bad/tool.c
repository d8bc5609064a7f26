/* Input for check-layering.py --expect-violations: each flagged line is marked. */
#include "strata/block.h"
#include "strata/block-ops.h"
#include "../../block/block-int.h"          /* BAD */
#include "block-int.h"                      /* BAD */
#include "../../block/qcow2/qcow2-format.h" /* BAD */
#include "qcow2.h"                          /* BAD */
#include "strata/block-driver.h"            /* BAD */

static int f(BlockNode *bs, const BlockDriver *drv)
{
    int a = bs->drv != NULL;                /* BAD */
    int b = drv->is_format;                 /* BAD */
    int c = bs->bl.request_alignment;       /* BAD */
    int d = bs->backing->bs != NULL;        /* BAD */
    int e = bs->backing_file[0];            /* BAD */
    const char *name = driver_format_name(drv);
    return a + b + c + d + e + (node_backing(bs) != NULL) + !!name;
}
