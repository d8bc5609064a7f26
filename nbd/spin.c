/*
 * Busy polling before the loop sleeps (see spin.h).
 *
 * With one request in flight every request is a wake-up of our thread,
 * and on a virtual machine a wake-up of an idle virtual CPU is an
 * inter-processor interrupt through the host: tens of microseconds, as
 * long as serving the request.  A thread that is still polling when the
 * request arrives needs no wake-up.  QEMU's iothreads busy poll for the
 * same reason (poll-max-ns), but only on handlers that can be polled
 * without a system call, which a socket is not; here the poll is glib's
 * whole set of file descriptors, with a zero timeout, so that nothing
 * else the loop watches (other clients, completions, the monitor) waits
 * behind the spin.
 *
 * A client that is slower than the longest spin, or one that shares
 * our CPU on a busy machine, makes the channel stop asking (channel.c).
 * The deadline is thread-local: each loop thread spins for the clients
 * it serves.  The poll function is installed on a thread's context the
 * first time one of them asks.
 *
 * The loop thread's cap (nbd_spin_cap) is QEMU's switch for its polling:
 * an iothread's poll-max-ns (0: no spin; qom-set changes it at once), in
 * the main loop STRATA_MAIN_LOOP_POLL_MAX_NS.  QEMU's poll-grow and
 * poll-shrink size its window by its own rule; the channel has its own
 * (channel.c), so they are only reported.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <glib.h>
#include "strata/error.h"
#include "strata/iothread.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"
#include "spin.h"

static __thread int64_t spin_deadline;
static __thread GMainContext *spin_ctx;
static __thread uint64_t spin_count;

static gint spin_poll(GPollFD *fds, guint nfds, gint timeout_ms)
{
    int64_t start = spin_deadline ? clock_ns() : 0;

    /*
     * The deadline stays until it passes: an unrelated event that ends
     * one spin (a completion) leaves the rest of the window to the next.
     */
    if (timeout_ms != 0 && start < spin_deadline) {
        int64_t now = start;
        int64_t end = spin_deadline;

        if (timeout_ms > 0 && now + timeout_ms * 1000000LL < end) {
            end = now + timeout_ms * 1000000LL;
        }
        while (now < end) {
            gint n = g_poll(fds, nfds, 0);
            if (n != 0) {
                return n;
            }
            /*
             * The client may be waiting for this CPU (the other ones
             * busy): let it run, or the spin delays what it waits for.
             */
            sched_yield();
            now = clock_ns();
        }
        if (timeout_ms > 0) {
            timeout_ms = MAX(0, timeout_ms - (gint)((now - start) / 1000000));
        }
    }
    if (start >= spin_deadline) {
        spin_deadline = 0;
    }
    return g_poll(fds, nfds, timeout_ms);
}

void nbd_spin_until(int64_t deadline)
{
    GMainContext *ctx = loop_context(loop_get());

    if (spin_ctx != ctx) {
        g_main_context_set_poll_func(ctx, spin_poll);
        spin_ctx = ctx;
    }
    if (deadline > spin_deadline) {
        spin_deadline = deadline;
    }
    spin_count++;
}

uint64_t nbd_spin_count(void)
{
    return spin_count;
}

static __thread const void *last_who;
static __thread int64_t shared_until;

void nbd_spin_note_request(const void *who, int64_t now)
{
    if (last_who && last_who != who) {
        shared_until = now + NBD_SPIN_SHARED_NS;
    }
    last_who = who;
}

bool nbd_spin_alone(int64_t now)
{
    return now >= shared_until;
}

/* No cap in the main loop unless asked: the channel's own limit holds. */
static int64_t main_cap = INT64_MAX;

void nbd_server_set_main_poll_max_ns(int64_t ns)
{
    __atomic_store_n(&main_cap, ns, __ATOMIC_RELAXED);
}

bool nbd_server_main_poll_from_env(GError **errp)
{
    const char *v = g_getenv(NBD_SERVER_MAIN_POLL_ENV);
    char *end;

    if (!v) {
        return true;
    }
    errno = 0;
    long long ns = strtoll(v, &end, 10);
    if (!*v || *end || errno || ns < 0) {
        error_setg(errp, "%s must be a number of nanoseconds (0 or more), "
                   "not '%s'", NBD_SERVER_MAIN_POLL_ENV, v);
        return false;
    }
    nbd_server_set_main_poll_max_ns(ns);
    return true;
}

int64_t nbd_spin_cap(void)
{
    int64_t cap = iothread_self_poll_max_ns();

    return cap >= 0 ? cap : __atomic_load_n(&main_cap, __ATOMIC_RELAXED);
}

int64_t nbd_spin_window(int64_t want, int64_t now)
{
    if (want <= 0 || !nbd_spin_alone(now)) {
        return 0;
    }
    return MIN(want, nbd_spin_cap());
}
