/*
 * strata-img convert: state shared by the front end (convert.c: options,
 * target creation) and the copy (convert-copy.c, on the copy engine).
 *
 * The copy works in 512-byte sectors, as qemu-img does, so that requests
 * are split at the same places and the target ends up with the same
 * clusters allocated.
 */
#ifndef STRATA_IMG_CONVERT_H
#define STRATA_IMG_CONVERT_H

#include <signal.h>
#include "strata/coroutine.h"
#include "img.h"

#define CONVERT_SECTOR 512
#define CONVERT_MAX_BUF_SECTORS 32768   /* 16 MiB: the -S limit */
#define CONVERT_BUF_SECTORS 4096        /* 2 MiB per request */
#define CONVERT_MAX_COROUTINES 16       /* -m limit */

/* qemu-img's -p progress meter (and SIGUSR1 reports without -p). */

typedef enum {
    CONVERT_DATA,
    CONVERT_ZERO,
    CONVERT_BACKING,   /* leave unallocated: the target's backing shows */
} ConvertStatus;

typedef struct ConvertState {
    /* Sources, concatenated. */
    BlockBackend **src;
    int64_t *src_sectors;
    int *src_alignment;         /* request alignment, in sectors */
    int src_num;
    int64_t total_sectors;

    BlockBackend *target;
    bool target_has_backing;
    bool target_is_new;
    int64_t target_backing_sectors;  /* -1: no backing or unknown */
    bool has_zero_init;
    /* The target allocates as it is written (qcow2...): the order of the
     * writes decides its layout.  Not raw over a file or a device. */
    bool target_has_allocation;

    bool compressed;
    bool copy_range;            /* -C: data ranges go out whole */
    bool salvage;
    bool quiet;
    bool wr_in_order;
    int64_t cluster_sectors;
    int64_t buf_sectors;
    int min_sparse;             /* sectors; 0: write everything */
    int alignment;              /* sectors, power of two */
    int num_coroutines;
    int64_t rate_limit;         /* bytes/s written; 0: unlimited */

    /* Iteration: the run iteration_sectors() answered last. */
    int64_t sector_next_status;
    ConvertStatus status;
    int64_t allocated_sectors, allocated_done;

    /* Rate limiting. */
    int64_t rate_start_ns;
    int64_t rate_bytes;

    /* An error already told the user. */
    bool engine_reported;
    /* In-order writes: everything before wr_offs (sectors) is written. */
    bool ordered;
    int64_t wr_offs;
    CoQueue wr_queue;
    int64_t engine_zeroed;          /* sectors: zero runs written up to */
    ImgProgress *progress;
} ConvertState;

/* The copy itself; returns 0 or -errno (after reporting the error). */
int convert_do_copy(ConvertState *s);

#endif
