/*
 * A short busy wait before the loop sleeps, for a client that sends its
 * next request within microseconds of our reply (one request in flight,
 * as backup tools do).  Private to nbd/.
 */
#ifndef NBD_SPIN_H
#define NBD_SPIN_H

#include <stdint.h>

/*
 * The loop of this thread polls its file descriptors without sleeping
 * until deadline (CLOCK_MONOTONIC, ns) before it blocks.  Safe to call
 * from any code in a loop's thread; a later deadline wins.
 */
void nbd_spin_until(int64_t deadline);

#endif
