/*
 * The stream job (QEMU 7.2's block-stream): copy into an image the data
 * its backing chain holds down to a base, then make the base the image's
 * backing file, dropping the images between from the chain.
 *
 * The job puts a copy-on-read filter above the image, with the chain
 * frozen under it, and reads every range the image does not hold through
 * it (REQ_PREFETCH reads by the copy engine): the filter writes what it
 * fetched into the image, as a guest read through it would.  Guest writes
 * go through the filter too, so a copy never overwrites them.
 */
#ifndef STRATA_STREAM_H
#define STRATA_STREAM_H

#include "strata/blockjob.h"

typedef struct StreamOptions {
    BlockNode *bs;               /* the image streamed into ("device") */
    BlockNode *base;             /* keep base and below; NULL: all */
    BlockNode *bottom;           /* or: copy down to bottom, included */
    const char *backing_file;    /* name written for the base, NULL: its filename */
    const char *filter_node_name;
    int64_t speed;
    BlockdevOnError on_error;
    int flags;                   /* JOB_MANUAL_FINALIZE, JOB_MANUAL_DISMISS */
    /*
     * Beyond QEMU (x-strata-discard-backing): once everything is copied,
     * discard the data of the images leaving the chain, when nothing else
     * uses them.
     */
    bool discard_backing;
} StreamOptions;

/*
 * Create and start the job.  The checks of the arguments themselves are
 * the QMP layer's; this fails (in QEMU's words) when the graph does not
 * allow the job: a frozen or busy chain, a permission conflict, a filter
 * node name already in use.  The job id must be valid (QEMU gives the
 * device name when none is given).
 */
bool stream_start(const char *job_id, const StreamOptions *o,
                  GError **errp);

#endif
