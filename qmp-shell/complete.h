/*
 * Tab completion from query-qmp-schema: command names, argument names
 * (dotted ones too, through nested objects, unions and alternates whose
 * type names the schema masks as numbers), enum and bool values, and in a
 * transaction block the action names and their data members.
 */
#ifndef STRATA_SHELL_COMPLETE_H
#define STRATA_SHELL_COMPLETE_H

#include <stdbool.h>
#include <glib.h>
#include <jansson.h>

typedef struct ShellSchema ShellSchema;

/* SCHEMA is query-qmp-schema's "return"; COMMANDS (used when SCHEMA is
 * NULL) query-commands' "return", which gives names only. */
ShellSchema *shell_schema_new(json_t *schema, json_t *commands);
void shell_schema_free(ShellSchema *s);
/* Names the shell itself handles, offered with the server's. */
void shell_schema_add_local(ShellSchema *s, const char *name);

/*
 * The candidates that may replace the word ending at the end of LINE (the
 * text before the cursor); IN_TRANSACTION when the line is an action of a
 * transaction block.  Each candidate is the whole replacement word; one
 * that ends in '=' or '.' wants no space after it.
 */
GPtrArray *shell_complete(ShellSchema *s, const char *line,
                          bool in_transaction);

#endif
