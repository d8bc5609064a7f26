/* Trace points: the event table, pattern matching and output. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "strata/trace.h"

bool trace_event_enabled[TRACE_EVENT_COUNT];

static const char *const event_names[TRACE_EVENT_COUNT] = {
#define TRACE_NAME(name) #name,
    TRACE_EVENT_LIST(TRACE_NAME)
#undef TRACE_NAME
};

static FILE *trace_out;
static GMutex trace_lock;

const char *trace_event_name(int id)
{
    return id >= 0 && id < TRACE_EVENT_COUNT ? event_names[id] : NULL;
}

int trace_enable_pattern(const char *pattern)
{
    bool enable = pattern[0] != '-';
    int matched = 0;

    if (!enable) {
        pattern++;
    }
    for (int i = 0; i < TRACE_EVENT_COUNT; i++) {
        if (g_pattern_match_simple(pattern, event_names[i])) {
            trace_event_enabled[i] = enable;
            matched++;
        }
    }
    return matched;
}

int trace_set_output(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        return -errno;
    }
    g_mutex_lock(&trace_lock);
    if (trace_out) {
        fclose(trace_out);
    }
    trace_out = f;
    g_mutex_unlock(&trace_lock);
    return 0;
}

void trace_emit(int id, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *args = g_strdup_vprintf(fmt, ap);
    va_end(ap);

    /* One write per line, so that lines of several threads do not mix. */
    g_mutex_lock(&trace_lock);
    FILE *f = trace_out ? trace_out : stderr;
    fprintf(f, "%s %s\n", event_names[id], args);
    fflush(f);
    g_mutex_unlock(&trace_lock);
    g_free(args);
}
