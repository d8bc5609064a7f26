/*
 * --object throttle-group for the tools (object-throttle.c), called by
 * objects.c's --object handling.
 */
#ifndef STRATA_TOOLS_OBJECT_THROTTLE_H
#define STRATA_TOOLS_OBJECT_THROTTLE_H

#include <stdbool.h>
#include <jansson.h>

#include "strata/error.h"

/* "throttle-group,help": the properties, as qemu-img lists them. */
void tool_throttle_group_help(void);
/*
 * Create group `id` from the remaining members of args (qom-type and id
 * taken out); from_json: the --object argument was JSON, so values are
 * typed, otherwise they are keyval strings.
 */
bool tool_throttle_group_add(json_t *args, bool from_json, const char *id,
                             GError **errp);
bool tool_throttle_group_exists(const char *id);
/* Remove the groups no node uses any more. */
void tool_throttle_groups_clear(void);

#endif
