/*
 * Trace points: named events, off until enabled (strata-img/strata-io -T,
 * QEMU's option), then printed one line each as "name arguments" to stderr
 * or a file, as QEMU's "log" trace back end prints them.  Where an event
 * matches one of QEMU's, it has QEMU's name and argument format, so the
 * same -T patterns select the same things.
 */
#ifndef STRATA_TRACE_H
#define STRATA_TRACE_H

#include <inttypes.h>
#include <stdbool.h>
#include <glib.h>

#define TRACE_EVENT_LIST(X) \
    X(bdrv_open_common) \
    X(blk_co_preadv) \
    X(blk_co_pwritev)

enum {
#define TRACE_ID(name) TRACE_ID_##name,
    TRACE_EVENT_LIST(TRACE_ID)
#undef TRACE_ID
    TRACE_EVENT_COUNT
};

extern bool trace_event_enabled[TRACE_EVENT_COUNT];

void trace_emit(int id, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

/* TRACE(name, "fmt", args...): at least one argument, as every event has. */
#define TRACE(name, ...) \
    do { \
        if (G_UNLIKELY(trace_event_enabled[TRACE_ID_##name])) { \
            trace_emit(TRACE_ID_##name, __VA_ARGS__); \
        } \
    } while (0)

const char *trace_event_name(int id);
/*
 * Enable the events a glob pattern ('*', '?') matches, or disable them
 * with a leading '-'.  The number of events matched.
 */
int trace_enable_pattern(const char *pattern);
/* Send trace lines to a file instead of stderr: 0 or -errno. */
int trace_set_output(const char *path);

#endif
