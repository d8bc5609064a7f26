/*
 * Helpers shared by the command-line tools (strata-io, strata-img): the
 * program name and QEMU-style error reports, QEMU's size parser, cache /
 * discard / aio mode names, QemuOpts-style option strings, --object, and
 * the "Format specific information" dump.
 *
 * Everything here prints the way QEMU 7.2's tools print, so that outputs
 * can be compared byte for byte once the program name is filtered.
 */
#ifndef STRATA_TOOL_COMMON_H
#define STRATA_TOOL_COMMON_H

#include <glib.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- Program name and reports ---- */

/* Remember basename(argv0): used as "NAME: " prefix and in prompts. */
void tool_set_name(const char *argv0);
const char *tool_name(void);
/* "NAME: message\n" on stderr (QEMU's error_report). */
void tool_error(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* "NAME: warning: message\n" on stderr (QEMU's warn_report). */
void tool_warn(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* Report err (prefixed by the printf-formatted prefix) and free it. */
void tool_error_gerror(GError *err, const char *prefix_fmt, ...)
    G_GNUC_PRINTF(2, 3);

/*
 * -T / --trace [enable=]PATTERN[,events=FILE][,file=FILE], as QEMU's:
 * enables strata's trace events (strata/trace.h) matching PATTERN or the
 * patterns in FILE; "help" lists them and exits.  tool_trace_init_file()
 * then sends the trace lines to the file named last, once a command is
 * sure to run.
 */
void tool_trace_option(const char *arg);
void tool_trace_init_file(void);

/* ---- Numbers ---- */

/*
 * QEMU's qemu_strtosz(): decimal (optionally with a fraction) or 0x hex,
 * then an optional suffix b/k/M/G/T/P/E (any case), bytes by default.
 * Rounds fractions to the nearest byte.  With end == NULL trailing
 * characters are an error.  Returns 0, -EINVAL or -ERANGE.  Hex numbers
 * with a suffix print QEMU's deprecation warning.
 */
int tool_strtosz(const char *nptr, const char **end, uint64_t *result);
/* qemu-io's cvtnum(): tool_strtosz limited to INT64_MAX; -EINVAL/-ERANGE. */
int64_t tool_cvtnum(const char *s);

/* ---- Cache, discard and aio modes (bdrv_parse_cache_mode & co.) ---- */

/*
 * "none"/"off", "directsync", "writeback", "unsafe", "writethrough":
 * updates NODE_O_NOCACHE / NODE_O_NO_FLUSH in *flags and *writethrough.
 * Returns -1 for an unknown mode (nothing changed).
 */
int tool_parse_cache_mode(const char *mode, int *flags, bool *writethrough);
/* "off"/"ignore" -> false, "on"/"unmap" -> true; -1 if unknown. */
int tool_parse_discard(const char *mode, bool *unmap);
/* "threads", "native", "io_uring" -> 0; -1 if unknown. */
int tool_parse_aio(const char *mode, const char **canonical);

/* ---- QemuOpts-style option strings ("a=1,b.c=x,flag") ---- */

/*
 * Parse params the way QEMU's qemu_opts_parse() does for the option lists
 * the tools use (no schema): values stay strings, ",," escapes a comma, a
 * bare "name" is "name=on" ("noname" is "name=off") with QEMU's deprecation
 * warning, later keys win.  Pairs are merged into *dict (created when NULL)
 * as flat dotted keys.  merge_list: the list merges all its -o strings and
 * refuses "id"; otherwise "id" must be an identifier and is kept.  On error
 * returns false with *errp set; *dict is left for the caller to free.
 */
bool tool_qemuopts_parse(json_t **dict, const char *params, bool merge_list,
                         GError **errp);

/*
 * The pieces of that syntax, for parsers with rules of their own (the
 * creation options of strata-img).  tool_qemuopts_next() reads one element
 * at params, "name=value" or a bare flag ("name" is name=on, "noname" is
 * name=off, with QEMU's deprecation warning if warn_on_flag), and returns
 * the position after it and its comma.  tool_qemuopts_value() reads a
 * value up to an unescaped ',' (",," is a comma) and returns the position
 * of that ','.  The caller frees the strings.
 */
const char *tool_qemuopts_next(const char *params, bool warn_on_flag,
                               char **name, char **value);
const char *tool_qemuopts_value(const char *p, char **value);

/*
 * The parsed flat keys as one nested tree, the form node_open() and
 * node_reopen() read ("file.filename" -> {"file": {"filename": ...}}).
 * Keys that cannot nest ("", "a..b", "x=1" next to "x.y=2") stay flat so
 * that the node refuses them by name, as QEMU does.  Consumes flat.
 */
json_t *tool_qemuopts_nest(json_t *flat);

/* ---- --object ---- */

/*
 * Handle one --object argument as QEMU's user_creatable_process_cmdline():
 * "help" lists the types and exits 0, "TYPE,help" lists its properties and
 * exits 0; an error is reported and exits 1.  Supported: secret,
 * throttle-group.
 */
void tool_object_process_cmdline(const char *arg);
/* A secret defined with --object (NULL if none); *len gets its size. */
const uint8_t *tool_secret_lookup(const char *id, size_t *len);
void tool_objects_cleanup(void);

/* ---- "Format specific information" ---- */

/*
 * Print a driver's specific-info object the way QEMU prints ImageInfoSpecific
 * (qemu-io info, qemu-img info): keys in QEMU's QDict iteration order,
 * dashes shown as spaces, 4 spaces per level starting at `indent` levels.
 * info may be the union {"type": ..., "data": {...}} or the data object.
 */
void tool_dump_specific_info(json_t *info, int indent);

#endif
