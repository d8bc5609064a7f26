/*
 * A short busy wait before the loop sleeps, for a client that sends its
 * next request within microseconds of our reply (one request in flight,
 * as backup tools do).  Private to nbd/.
 */
#ifndef NBD_SPIN_H
#define NBD_SPIN_H

#include <stdbool.h>
#include <stdint.h>

/*
 * The loop of this thread polls its file descriptors without sleeping
 * until deadline (CLOCK_MONOTONIC, ns) before it blocks.  Safe to call
 * from any code in a loop's thread; a later deadline wins.
 */
void nbd_spin_until(int64_t deadline);

/*
 * How long after a request of another channel (of any thread) ended, or
 * another one arrived, a channel does not spin.  The spin keeps a CPU; a
 * guest writing through another export needs the CPUs for its own
 * requests (the copy-before-write copies run in worker threads): with
 * the spin, guest write p99 during a pull was 3.24 ms against 0.71 ms
 * without (docs/performance.md, "Busy wait and the guest's writes").
 * 50 ms, not the 10 of before: a guest writer that waits for a CPU sends
 * nothing, and a spin that starts then keeps the CPU it waits for (a
 * CPU that never idles pulls no waiting task over); at load 18 the
 * bench's writer was silent over 10 ms 1-6 times in 3 s, never over 50
 * ("Guest p99 beside the busy wait").
 */
#define NBD_SPIN_SHARED_NS (50 * 1000000LL)

/* Bytes of a request reached channel who at now (CLOCK_MONOTONIC ns). */
void nbd_spin_note_request(const void *who, int64_t now);
/*
 * A request of who is in flight from begin to end (its reply sent).  A
 * request of another client in flight, however long it takes (a guest
 * write waiting for its copy-before-write copy), keeps the spin off.
 */
void nbd_spin_request_begin(const void *who);
void nbd_spin_request_end(const void *who, int64_t now);

/*
 * Whether a channel with mine requests of its own in flight is alone at
 * now: no other channel's request in flight, none arrived or ended in
 * the last NBD_SPIN_SHARED_NS.
 */
bool nbd_spin_alone(int64_t now, unsigned mine);

/*
 * The longest busy wait of this thread's channels (ns; 0: never): the
 * poll-max-ns of the iothread running them (QEMU's switch for its own
 * polling), in the main loop the value of nbd_server_set_main_poll_max_ns()
 * (QEMU 7.2's main loop has no such property).
 */
int64_t nbd_spin_cap(void);

/*
 * How long a channel with mine requests in flight that would like to
 * busy-wait want ns for its next request, at now, does: 0 when it is not
 * alone (nbd_spin_alone) or the cap is 0, else want cut to the cap.
 */
int64_t nbd_spin_window(int64_t want, int64_t now, unsigned mine);

/* How many busy waits nbd_spin_until() started in this thread. */
uint64_t nbd_spin_count(void);

/*
 * What the busy waits of the whole process did, for the bench to explain
 * a run (bench/fleecing-bench --probe).  With the environment variable
 * NBD_SPIN_STATS_ENV set to a file name, the counters live in that file
 * (mapped shared, created or grown to size when the first one is
 * counted, never truncated: counts go on from what an existing file
 * holds, so a reader takes differences or removes it first), so
 * another process reads them at any moment without disturbing the
 * daemon: uint64_t in the machine's byte order, in the order below, the
 * first one the number of them.  Relaxed atomic adds: a few nanoseconds
 * against the tens of microseconds of a request.
 */
#define NBD_SPIN_STATS_ENV "STRATA_NBD_SPIN_STATS"

typedef struct {
    uint64_t nfields;
    uint64_t requests;      /* requests taken, all channels */
    uint64_t asked;         /* waits on an empty socket wanting a window */
    uint64_t shared;        /* of those refused: another channel was busy */
    uint64_t capped;        /* refused: poll-max-ns 0 */
    uint64_t spins;         /* windows opened */
    uint64_t hits;          /* the channel's next request came inside it */
    uint64_t misses;        /* later */
    uint64_t loops;         /* busy loops run by the poll function */
    uint64_t loop_events;   /* of those ended by a ready fd */
    uint64_t polls;         /* zero-timeout polls in them */
    uint64_t spun_ns;       /* wall-clock time in them */
    uint64_t yield_away;    /* sched_yield() calls that took over 20 us */
    uint64_t yield_away_ns; /* the time those took: another thread ran */
    uint64_t cut;           /* windows closed early: another client busy */
} NbdSpinStats;

/* The counters (never NULL). */
NbdSpinStats *nbd_spin_stats(void);

#define NBD_SPIN_STAT_ADD(field, n) \
    __atomic_fetch_add(&nbd_spin_stats()->field, (n), __ATOMIC_RELAXED)

#endif
