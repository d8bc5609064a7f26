/*
 * The commands that describe the server itself: query-version,
 * query-commands and query-qmp-schema.  They read only what the generator
 * produced (the command table and the introspection data).
 */
#include "strata/qmp.h"
#include "qapi-commands.h"
#include "qapi-visit.h"

/*
 * The interface level: clients pick features by QEMU version, and strata
 * implements qemu-storage-daemon 7.2's interface.  These numbers live
 * here only: the server's greeting is meant to be built from
 * qmp_query_version() as well.
 */
enum { QEMU_LEVEL_MAJOR = 7, QEMU_LEVEL_MINOR = 2, QEMU_LEVEL_MICRO = 0 };

VersionInfo *qmp_query_version(GError **errp)
{
    VersionInfo *info = g_new0(VersionInfo, 1);
    info->qemu = g_new0(VersionTriple, 1);
    info->qemu->major = QEMU_LEVEL_MAJOR;
    info->qemu->minor = QEMU_LEVEL_MINOR;
    info->qemu->micro = QEMU_LEVEL_MICRO;
    info->package = g_strdup("strata " STRATA_VERSION);
    return info;
}

CommandInfoList *qmp_query_commands(GError **errp)
{
    CommandInfoList *head = NULL;
    /* Built back to front, so the list comes out in table (name) order. */
    for (size_t i = qmp_commands_count; i-- > 0;) {
        CommandInfoList *node = g_new0(CommandInfoList, 1);
        node->value = g_new0(CommandInfo, 1);
        node->value->name = g_strdup(qmp_commands[i].name);
        node->next = head;
        head = node;
    }
    return head;
}

/*
 * The data was written by the generator as JSON; reading it through the
 * generated SchemaInfo reader also proves it fits the schema it describes
 * (a unit test calls this).
 */
SchemaInfoList *qmp_query_qmp_schema(GError **errp)
{
    json_t *tree = qmp_introspection();
    SchemaInfoList *list = qapi_SchemaInfoList_from_json(tree, errp);
    json_decref(tree);
    return list;
}
