/* Command-line node options: one tree parser, then the generated reader. */
#include "cmdline.h"
#include "qapi-visit.h"

BlockdevOptions *qapi_blockdev_options_from_cmdline(const char *str,
                                                    GError **errp)
{
    bool keyval;
    /* A leading bare word is the driver, as qemu-storage-daemon reads it. */
    json_t *tree = qapi_parse_cmdline(str, "driver", &keyval, errp);
    if (!tree) {
        return NULL;
    }
    BlockdevOptions *opts = keyval ? qapi_BlockdevOptions_from_keyval(tree, errp)
                                   : qapi_BlockdevOptions_from_json(tree, errp);
    json_decref(tree);
    return opts;
}
