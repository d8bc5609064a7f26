/*
 * Node options from a command line, through the same generated reader as
 * blockdev-add: "--blockdev driver=file,node-name=f,filename=x" (dotted
 * keys, scalars converted by the schema) or "--blockdev '{...}'" (JSON).
 */
#ifndef STRATA_QAPI_CMDLINE_H
#define STRATA_QAPI_CMDLINE_H

#include <glib.h>
#include "qapi-types.h"

BlockdevOptions *qapi_blockdev_options_from_cmdline(const char *str,
                                                    GError **errp);

#endif
