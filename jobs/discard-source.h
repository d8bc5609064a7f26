/*
 * x-strata-discard-source, shared by commit and active commit (mirror):
 * who may use an image whose ranges the job drops, and making such images
 * writable for the job and read-only again after it.  Private to jobs/.
 */
#ifndef STRATA_JOBS_DISCARD_SOURCE_H
#define STRATA_JOBS_DISCARD_SOURCE_H

#include <glib.h>

#include "strata/block.h"
#include "strata/error.h"

/*
 * Dropping its clusters is safe only when all that reads `it` is the
 * chain the job merges (`above`, the image or filter over it, or the job's
 * own `edge`), which reads the base's copy after the job.
 */
bool discard_source_check_users(BlockNode *it, BlockNode *above,
                                BlockChild *edge, GError **errp);
/* `it` can drop ranges and is writable (reopened ones go to `reopened`). */
bool discard_source_prepare(BlockNode *it, GPtrArray *reopened,
                            GError **errp);
/* The images in `reopened` read-only again; the array is emptied. */
void discard_source_restore(GPtrArray *reopened);

#endif
