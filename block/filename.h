/*
 * Private to block/: the filename code (filename.c) node.c opens with.
 */
#ifndef STRATA_BLOCK_FILENAME_H
#define STRATA_BLOCK_FILENAME_H

#include "block-int.h"

void refresh_filename(BlockNode *bs, int flags);
const BlockDriver *protocol_from_filename(const char *filename);
bool unknown_protocol(const char *filename, GError **errp);
json_t *parse_json_filename(const char *text, GError **errp);
char *backing_path(BlockNode *bs, const char *name, GError **errp);

#endif
