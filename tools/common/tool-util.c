/* Program name, reports, QEMU's size parser and mode names for the tools. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block.h"
#include "strata/trace.h"
#include "tool-common.h"
#include "strata/units.h"

static char *prog_name;

void tool_set_name(const char *argv0)
{
    g_free(prog_name);
    prog_name = g_path_get_basename(argv0 && *argv0 ? argv0 : "strata");
    g_set_prgname(prog_name);
}

const char *tool_name(void)
{
    return prog_name ? prog_name : "strata";
}

static void vreport(const char *kind, const char *fmt, va_list ap)
{
    fprintf(stderr, "%s: %s", tool_name(), kind);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

void tool_error(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport("", fmt, ap);
    va_end(ap);
}

void tool_warn(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vreport("warning: ", fmt, ap);
    va_end(ap);
}

void tool_error_gerror(GError *err, const char *prefix_fmt, ...)
{
    va_list ap;
    char *prefix;

    va_start(ap, prefix_fmt);
    prefix = g_strdup_vprintf(prefix_fmt, ap);
    va_end(ap);
    /*
     * A message may carry QEMU's "hint" lines after the first newline; they
     * are printed without the program prefix, as error_report_err() does.
     */
    fprintf(stderr, "%s: %s%s\n", tool_name(), prefix,
            err ? err->message : "Unknown error");
    g_free(prefix);
    if (err) {
        g_error_free(err);
    }
}

/* ---- -T / --trace ---- */

static char *trace_file;

static bool is_help(const char *s)
{
    return !strcmp(s, "help") || !strcmp(s, "?");
}

/*
 * One pattern, as QEMU's trace_enable_events(): "help" lists the events
 * and exits; a name that is no pattern and no event gets a warning (where
 * names the events file line it came from, or is NULL).
 */
static void trace_enable(const char *pattern, const char *where)
{
    if (is_help(pattern)) {
        for (int i = 0; i < TRACE_EVENT_COUNT; i++) {
            printf("%s\n", trace_event_name(i));
        }
        exit(EXIT_SUCCESS);
    }
    const char *name = pattern[0] == '-' ? pattern + 1 : pattern;
    /* QEMU matches '?' too, but only '*' spares a name the warning. */
    if (!trace_enable_pattern(pattern) && !strchr(name, '*')) {
        if (where) {
            fprintf(stderr, "%s:%s: warning: trace event '%s' does not exist\n",
                    tool_name(), where, name);
        } else {
            tool_warn("trace event '%s' does not exist", name);
        }
    }
}

/* A file of patterns, one a line; "#" starts a comment line. */
static void trace_enable_from_file(const char *fname)
{
    FILE *f = fopen(fname, "r");
    char line[1024];
    unsigned n = 0;

    if (!f) {
        fprintf(stderr, "%s:%s: %s\n", tool_name(), fname, g_strerror(errno));
        exit(EXIT_FAILURE);
    }
    while (fgets(line, sizeof(line), f)) {
        size_t len = strlen(line);
        n++;
        if (len > 1) {
            line[len - 1] = '\0';
            if (line[0] != '#') {
                char *where = g_strdup_printf("%s:%u", fname, n);
                trace_enable(line, where);
                g_free(where);
            }
        }
    }
    fclose(f);
}

void tool_trace_option(const char *arg)
{
    char *enable = NULL, *events = NULL, *file = NULL;
    GString *elem = g_string_new(NULL);
    const char *p = arg;
    bool first = true;

    /* QemuOpts syntax: "a=b,c=d", ",," for a comma, "enable=" implied. */
    while (*p || elem->len || first) {
        if (*p == ',' && p[1] == ',') {
            g_string_append_c(elem, ',');
            p += 2;
            continue;
        }
        if (*p && *p != ',') {
            g_string_append_c(elem, *p++);
            continue;
        }
        char *eq = strchr(elem->str, '=');
        const char *key = elem->str, *val = "on";
        if (eq) {
            *eq = '\0';
            val = eq + 1;
        } else if (first) {
            key = "enable";
            val = elem->str;
        }
        char **slot = !strcmp(key, "enable") ? &enable
                      : !strcmp(key, "events") ? &events
                      : !strcmp(key, "file") ? &file : NULL;
        if (!slot) {
            tool_error("Invalid parameter '%s'", key);
            exit(EXIT_FAILURE);
        }
        g_free(*slot);
        *slot = g_strdup(val);
        g_string_truncate(elem, 0);
        first = false;
        if (!*p) {
            break;
        }
        p++;
    }
    g_string_free(elem, TRUE);

    if (enable) {
        trace_enable(enable, NULL);
    }
    if (events) {
        trace_enable_from_file(events);
    }
    /* Each -T names the output anew, as in QEMU. */
    g_free(trace_file);
    trace_file = file;
    g_free(enable);
    g_free(events);
}

void tool_trace_init_file(void)
{
    int ret = trace_file ? trace_set_output(trace_file) : 0;
    if (ret < 0) {
        tool_error("Error opening logfile %s: %s", trace_file,
                   g_strerror(-ret));
        exit(EXIT_FAILURE);
    }
}

/* ---- qemu_strtosz ---- */

int tool_strtosz(const char *nptr, const char **end, uint64_t *result)
{
    bool hex_suffix = false;
    int ret = strtosz(nptr, end, result, &hex_suffix);
    if (hex_suffix) {
        tool_warn("Using a multiplier suffix on hex numbers is deprecated: %s",
                  nptr);
    }
    return ret;
}

int64_t tool_cvtnum(const char *s)
{
    uint64_t value;
    int err = tool_strtosz(s, NULL, &value);

    if (err < 0) {
        return err;
    }
    if (value > INT64_MAX) {
        return -ERANGE;
    }
    return (int64_t)value;
}

/* ---- Modes ---- */

int tool_parse_cache_mode(const char *mode, int *flags, bool *writethrough)
{
    int f = *flags & ~(NODE_O_NOCACHE | NODE_O_NO_FLUSH);
    bool wt;

    if (!strcmp(mode, "off") || !strcmp(mode, "none")) {
        f |= NODE_O_NOCACHE;
        wt = false;
    } else if (!strcmp(mode, "directsync")) {
        f |= NODE_O_NOCACHE;
        wt = true;
    } else if (!strcmp(mode, "writeback")) {
        wt = false;
    } else if (!strcmp(mode, "unsafe")) {
        f |= NODE_O_NO_FLUSH;
        wt = false;
    } else if (!strcmp(mode, "writethrough")) {
        wt = true;
    } else {
        return -1;
    }
    *flags = f;
    *writethrough = wt;
    return 0;
}

int tool_parse_discard(const char *mode, bool *unmap)
{
    if (!strcmp(mode, "off") || !strcmp(mode, "ignore")) {
        *unmap = false;
    } else if (!strcmp(mode, "on") || !strcmp(mode, "unmap")) {
        *unmap = true;
    } else {
        return -1;
    }
    return 0;
}

int tool_parse_aio(const char *mode, const char **canonical)
{
    static const char *const modes[] = { "threads", "native", "io_uring" };

    for (size_t i = 0; i < G_N_ELEMENTS(modes); i++) {
        if (!strcmp(mode, modes[i])) {
            *canonical = modes[i];
            return 0;
        }
    }
    return -1;
}
