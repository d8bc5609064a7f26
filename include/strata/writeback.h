/*
 * Write-behind: ask the kernel to start writing a node's page cache to
 * the disk now, without waiting for it (sync_file_range(2) with
 * SYNC_FILE_RANGE_WRITE on the files below the node).
 *
 * A job that writes gigabytes and then flushes (commit) otherwise leaves
 * the disk idle while it copies: the kernel starts background writeback
 * only past dirty_background_ratio of memory (gigabytes here), so the
 * copy's dirty pages pile up and every fdatasync on the way (qcow2 syncs
 * for each new L2 table) and the final flush write them all while the
 * copy waits.  Started early, the writes go to the disk while the job
 * copies, and each sync waits only for the last few megabytes.
 */
#ifndef STRATA_WRITEBACK_H
#define STRATA_WRITEBACK_H

#include "strata/block.h"
#include "strata/coroutine.h"

/*
 * Start writeback of every dirty page of the page-cache files that bs
 * writes to (bs itself if it is a file node, else down every edge that
 * holds the write permission; O_DIRECT files have no dirty pages and are
 * left alone).  The system call runs in the thread pool: it may block
 * while the device queue is full, and the loop must not.  Nothing is made
 * durable: this only moves writes earlier.  Returns how many files were
 * asked (0 when none is in the page cache).
 */
int coroutine_fn node_co_start_writeback(BlockNode *bs);

#endif
