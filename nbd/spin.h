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
 * How long after a request of another channel of this thread a channel
 * does not spin.  The spin keeps a CPU; a guest writing through another
 * export of the same thread needs the CPUs for its own requests (the
 * copy-before-write copies run in worker threads): with the spin, guest
 * write p99 during a pull was 3.24 ms against 0.71 ms without
 * (docs/performance.md, "Busy wait and the guest's writes").
 */
#define NBD_SPIN_SHARED_NS (10 * 1000000LL)

/* A request reached channel who at now (CLOCK_MONOTONIC ns). */
void nbd_spin_note_request(const void *who, int64_t now);

/* Whether no other channel of this thread took a request lately. */
bool nbd_spin_alone(int64_t now);

#endif
