/*
 * The one check of user-given identifiers, shared by every layer.
 */
#include <string.h>
#include <glib.h>

#include "strata/id.h"

bool id_wellformed(const char *id)
{
    if (!g_ascii_isalpha(id[0])) {
        return false;
    }
    for (const char *p = id + 1; *p; p++) {
        if (!g_ascii_isalnum(*p) && !strchr("-._", *p)) {
            return false;
        }
    }
    return true;
}
