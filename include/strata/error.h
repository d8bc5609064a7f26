/*
 * One error rule for the whole library.
 *
 * Control-path functions (open, attach, reopen, permission changes, option
 * parsing) take `GError **errp` last.  On failure they set *errp AND return a
 * failure value (false, NULL or a negative number); on success they never
 * touch *errp.  The message is the one a user reads: it names the node, file
 * or option at fault.
 *
 * Data-path coroutine functions (preadv, pwritev, flush, ...) return a
 * negative errno instead, exactly as a system call would: the caller (a tool,
 * a job, the QMP layer) turns it into a message with the context it knows.
 */
#ifndef STRATA_ERROR_H
#define STRATA_ERROR_H

#include <glib.h>
#include <stdbool.h>

#define STRATA_ERROR strata_error_quark()
GQuark strata_error_quark(void);

/* Codes map one to one onto QMP error classes. */
typedef enum {
    STRATA_ERROR_GENERIC = 0,       /* GenericError */
    STRATA_ERROR_COMMAND_NOT_FOUND, /* CommandNotFound */
    STRATA_ERROR_DEVICE_NOT_ACTIVE, /* DeviceNotActive */
    STRATA_ERROR_DEVICE_NOT_FOUND,  /* DeviceNotFound */
    STRATA_ERROR_KVM_MISSING_CAP,   /* KVMMissingCap */
} StrataErrorCode;

const char *strata_error_class_name(int code);

/* Set *errp (if errp is non-NULL) to a GenericError with a printf message. */
void error_setg(GError **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Same, with ": strerror(errnum)" appended, as QEMU's error_setg_errno. */
void error_setg_errno(GError **errp, int errnum, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
void error_set_class(GError **errp, StrataErrorCode code, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
/* Prefix an existing error message: "prefix: old message". */
void error_prefix(GError **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Move src into *dst (freeing src if dst is NULL or already set). */
void error_propagate(GError **dst, GError *src);


/*
 * Warnings the library must show a person (e.g. the raw probing warning).
 * The message is printed verbatim to stderr unless a program installs its
 * own handler (the daemon sends them to its log).
 */
void warn_print(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
void warn_set_handler(void (*handler)(const char *msg));
/*
 * An error the library reports itself because no caller is left to take
 * it (QEMU's error_report outside a monitor command): "PROGRAM: message",
 * through the same handler as warn_print.
 */
void error_print(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/*
 * Whether the program is inside a monitor command now (QEMU's
 * monitor_cur()): there error_print() leaves the program name out, as
 * QEMU's error_report() does.  NULL (the default): never.
 */
void report_set_monitor_check(bool (*in_command)(void));

/*
 * QEMU's warn_report(): "warning: message", prefixed as QEMU prefixes it
 * for where the program is.  report_set_context() says where: NULL (the
 * default) for a program's own work ("PROGRAM: warning: ..."), "" while
 * the daemon serves QMP commands (QEMU prints neither the program nor a
 * location for a monitor), or the command-line option being carried out,
 * as "--blockdev ARG" ("PROGRAM: --blockdev ARG: warning: ...").
 */
void report_set_context(const char *context);
void warn_report(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

#endif
