/*
 * Identifiers users give objects (node names, job, export, object and
 * blkdebug rule ids).
 */
#ifndef STRATA_ID_H
#define STRATA_ID_H

#include <stdbool.h>

/* QEMU's rule: a letter, then letters, digits, '-', '.' and '_'. */
bool id_wellformed(const char *id);

#endif
