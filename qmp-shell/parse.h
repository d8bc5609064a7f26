/*
 * The input language of strata-shell, which is QEMU 7.2's qmp-shell's:
 *
 *   command-name [key=value]...          one QMP command
 *   transaction(                         starts collecting actions
 *   action-name [key=value]... [)]       one action; ')' ends the block
 *   )                                    sends the collected transaction
 *   transaction( action ... )            the same on one line
 *
 * A value is an integer when Python's int() would take it, true or false
 * (any case), a JSON or Python literal when it starts with '{' or '[',
 * and a string otherwise (quotes included: qmp-shell does not strip them).
 * Dotted keys ("file.filename=x") build nested objects.
 *
 * Pure functions over jansson values; no I/O, so the unit tests drive it.
 */
#ifndef STRATA_SHELL_PARSE_H
#define STRATA_SHELL_PARSE_H

#include <stdbool.h>
#include <glib.h>
#include <jansson.h>

#define SHELL_ERROR (shell_error_quark())
GQuark shell_error_quark(void);

/* What one line gave. */
typedef enum {
    SHELL_LINE_NOTHING,     /* empty, or an action stored for later */
    SHELL_LINE_COMMAND,     /* a command to send */
} ShellLineResult;

typedef struct ShellParser {
    bool in_transaction;    /* between "transaction(" and ")" */
    json_t *actions;        /* the actions collected so far */
} ShellParser;

void shell_parser_init(ShellParser *p);
void shell_parser_reset(ShellParser *p);

/*
 * Parse one input line.  On SHELL_LINE_COMMAND *cmd is the request
 * {"execute": ..., "arguments": {...}} (owned by the caller).  Returns -1
 * with *errp set when the line is malformed; the message is qmp-shell's
 * (the caller adds its "Error while parsing command line: " frame).
 */
int shell_parse_line(ShellParser *p, const char *line, json_t **cmd,
                     GError **errp);

/* The line split as qmp-shell splits it (quoted parts keep their quotes). */
GPtrArray *shell_tokenize(const char *line);

/* One value as qmp-shell reads it; NULL with *errp for an integer that does
 * not fit 64 bits (which jansson cannot carry). */
json_t *shell_parse_value(const char *val, GError **errp);

/* Store key=value tokens into obj, dotted keys building nested objects. */
bool shell_add_args(json_t *obj, char **tokens, guint n, GError **errp);

#endif
