/*
 * What the copy engine's unit tests (test-block-copy*.c) share
 * (tests/block-copy-fixture.c): running the engine in a coroutine, a
 * progress callback that counts, and a classify that holds chunks at a
 * gate for as long as a test wants (order of events, never timing).
 */
#ifndef TESTS_BLOCK_COPY_FIXTURE_H
#define TESTS_BLOCK_COPY_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/backend.h"
#include "strata/block-copy.h"
#include "strata/coroutine.h"
#include "strata/job.h"

/* The engine's granularity on the tests' files and null-co nodes. */
#define GRAN (64 * 1024)

/* The backends that hold the engine's source and target (see edge()). */
typedef struct Edges {
    BlockBackend *src, *dst;
} Edges;

/* Free the engine s, then the backends in e and the nodes: the engine
 * holds the edges, the edges the nodes. */
void copy_close(BlockCopyState *s, Edges *e, BlockNode *src, BlockNode *dst);

/* block_copy_new, or the test fails with its message. */
BlockCopyState *new_copy(BlockCopyOptions *o);

/* One engine call in a coroutine of its own. */
typedef struct Run {
    BlockCopyState *s;
    Job *job;                /* run_co: the job it runs for, or NULL */
    int64_t offset, bytes;   /* range_co: the range */
    int ret;
    bool is_read;
    bool done;
} Run;

/* block_copy_run(r->s, r->job, ...) */
void run_co(void *opaque);
/* block_copy_range(r->s, r->offset, r->bytes, ...) */
void range_co(void *opaque);
/* run_co until it returns; is_read (may be NULL) gets the failed side. */
int run_sync(BlockCopyState *s, bool *is_read);

/* What a progress callback saw: bytes by kind, and per granule. */
typedef struct Seen {
    int64_t bytes[3];
    int *per_granule;        /* times each granule was reported, or NULL */
    int64_t granules;
} Seen;

/* A BlockCopyProgressFunc; opaque is a Seen. */
void on_progress(void *opaque, int64_t offset, int64_t bytes,
                 BlockCopyKind kind);

/*
 * A classify that holds chunks from `from` on at a gate until the test
 * opens it: chunks in flight for as long as a test wants, no timing.
 */
typedef struct Gate {
    int64_t skip_below;      /* below: nothing to copy */
    int64_t from;
    bool open;
    int waiting;
    CoQueue q;
} Gate;

void gate_init(Gate *g, int64_t from);
void gate_open(Gate *g);
/* A BlockCopyClassifyFunc; opaque is a Gate. */
int coroutine_fn gated_classify(void *opaque, int64_t offset, int64_t bytes,
                                int64_t *pnum);

/* A classify for which everything is data (no block status asked). */
int coroutine_fn all_data(void *opaque, int64_t offset, int64_t bytes,
                          int64_t *pnum);

#endif
