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

/*
 * The longest busy wait of this thread's channels (ns; 0: never): the
 * poll-max-ns of the iothread running them (QEMU's switch for its own
 * polling), in the main loop the value of nbd_server_set_main_poll_max_ns()
 * (QEMU 7.2's main loop has no such property).
 */
int64_t nbd_spin_cap(void);

/*
 * How long a channel that would like to busy-wait want ns for its next
 * request, at now, does: 0 when another channel of the thread took a
 * request lately or the cap is 0, else want cut to the cap.
 */
int64_t nbd_spin_window(int64_t want, int64_t now);

/* How many busy waits nbd_spin_until() started in this thread. */
uint64_t nbd_spin_count(void);

#endif
