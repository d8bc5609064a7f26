/*
 * Private to block/: the filename code (filename.c) node.c opens with.
 */
#ifndef STRATA_BLOCK_FILENAME_H
#define STRATA_BLOCK_FILENAME_H

#include "block-int.h"

void filename_refresh(BlockNode *bs, int flags);
const BlockDriver *filename_find_protocol(const char *filename);
bool filename_unknown_protocol(const char *filename, GError **errp);
json_t *filename_parse_json(const char *text, GError **errp);
char *filename_backing_path(BlockNode *bs, const char *name, GError **errp);

#endif
