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
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <glib.h>
#include "strata/error.h"
#include "strata/iothread.h"
#include "strata/loop.h"
#include "strata/nbd-server.h"
#include "spin.h"

static __thread int64_t spin_deadline;
static __thread GMainContext *spin_ctx;
static __thread uint64_t spin_count;

/*
 * Whether the other clients are quiet, process-wide: the spin keeps a
 * CPU whichever thread it runs in, and a guest writing through an export
 * of another iothread needs the CPUs as much as one of the same thread.
 * Relaxed atomics: a decision made on a value a request old is as good.
 */
static const void *last_who;
static int64_t shared_until;
static unsigned inflight;

static NbdSpinStats local_stats = { .nfields = sizeof(NbdSpinStats) / 8 };

/* In the file NBD_SPIN_STATS_ENV names, else in local_stats. */
static NbdSpinStats *map_stats(void)
{
    const char *path = g_getenv(NBD_SPIN_STATS_ENV);
    NbdSpinStats *st = MAP_FAILED;

    if (path && *path) {
        /*
         * Not truncated: a bench (or another daemon) may have it mapped,
         * and a mapping past a file's end faults (SIGBUS).  Grown only if
         * short; a regular file only, not through a symlink.
         */
        int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
        if (fd >= 0) {
            struct stat sb;
            if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) &&
                (sb.st_size >= (off_t)sizeof(*st) ||
                 ftruncate(fd, sizeof(*st)) == 0)) {
                st = mmap(NULL, sizeof(*st), PROT_READ | PROT_WRITE,
                          MAP_SHARED, fd, 0);
            }
            close(fd);
        }
    }
    if (st == MAP_FAILED) {
        /* a measuring aid only: without its file the daemon runs as ever */
        return &local_stats;
    }
    st->nfields = sizeof(*st) / 8;
    return st;
}

NbdSpinStats *nbd_spin_stats(void)
{
    static NbdSpinStats *stats;

    if (g_once_init_enter(&stats)) {
        g_once_init_leave(&stats, map_stats());
    }
    return stats;
}

/*
 * sched_yield() that took longer than this gave the CPU to another
 * thread (a yield with nobody else runnable returns in about a
 * microsecond).
 */
#define YIELD_AWAY_NS (20 * 1000)

static gint spin_poll(GPollFD *fds, guint nfds, gint timeout_ms)
{
    int64_t start = spin_deadline ? clock_ns() : 0;

    if (start < spin_deadline &&
        start < __atomic_load_n(&shared_until, __ATOMIC_RELAXED)) {
        /* another client took a request since the window opened */
        NBD_SPIN_STAT_ADD(cut, 1);
        spin_deadline = 0;
    }
    /*
     * Else the deadline stays until it passes: an unrelated event that
     * ends one spin (a completion) leaves the rest of the window to the
     * next.
     */
    if (timeout_ms != 0 && start < spin_deadline) {
        int64_t now = start;
        int64_t end = spin_deadline;

        if (timeout_ms > 0 && now + timeout_ms * 1000000LL < end) {
            end = now + timeout_ms * 1000000LL;
        }
        uint64_t polls = 0;
        gint n = 0;

        NBD_SPIN_STAT_ADD(loops, 1);
        while (now < end) {
            polls++;
            n = g_poll(fds, nfds, 0);
            if (n != 0) {
                break;
            }
            /*
             * The client may be waiting for this CPU (the other ones
             * busy): let it run, or the spin delays what it waits for.
             */
            sched_yield();
            int64_t after = clock_ns();
            if (after - now > YIELD_AWAY_NS) {
                NBD_SPIN_STAT_ADD(yield_away, 1);
                NBD_SPIN_STAT_ADD(yield_away_ns, after - now);
            }
            now = after;
        }
        NBD_SPIN_STAT_ADD(polls, polls);
        if (n != 0) {
            NBD_SPIN_STAT_ADD(loop_events, 1);
            NBD_SPIN_STAT_ADD(spun_ns, clock_ns() - start);
            return n;
        }
        NBD_SPIN_STAT_ADD(spun_ns, now - start);
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
    NBD_SPIN_STAT_ADD(spins, 1);
}

uint64_t nbd_spin_count(void)
{
    return spin_count;
}

/* who was busy at now: if the last one busy was another, not alone. */
static void note_busy(const void *who, int64_t now)
{
    if (__atomic_load_n(&last_who, __ATOMIC_RELAXED) != who) {
        const void *prev = __atomic_exchange_n(&last_who, who,
                                               __ATOMIC_RELAXED);
        if (prev && prev != who) {
            __atomic_store_n(&shared_until, now + NBD_SPIN_SHARED_NS,
                             __ATOMIC_RELAXED);
        }
    }
}

void nbd_spin_note_request(const void *who, int64_t now)
{
    NBD_SPIN_STAT_ADD(requests, 1);
    note_busy(who, now);
}

void nbd_spin_request_begin(const void *who)
{
    (void)who;
    __atomic_fetch_add(&inflight, 1, __ATOMIC_RELAXED);
}

void nbd_spin_request_end(const void *who, int64_t now)
{
    __atomic_fetch_sub(&inflight, 1, __ATOMIC_RELAXED);
    /* the quiet time counts from the end of the last request of another */
    note_busy(who, now);
}

bool nbd_spin_alone(int64_t now, unsigned mine)
{
    return now >= __atomic_load_n(&shared_until, __ATOMIC_RELAXED) &&
           __atomic_load_n(&inflight, __ATOMIC_RELAXED) <= mine;
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

int64_t nbd_spin_window(int64_t want, int64_t now, unsigned mine)
{
    if (want <= 0) {
        return 0;
    }
    NBD_SPIN_STAT_ADD(asked, 1);
    if (!nbd_spin_alone(now, mine)) {
        NBD_SPIN_STAT_ADD(shared, 1);
        return 0;
    }
    int64_t cap = nbd_spin_cap();
    if (cap <= 0) {
        NBD_SPIN_STAT_ADD(capped, 1);
        return 0;
    }
    return MIN(want, cap);
}
