/*
 * qcow2's blockdev-create (qcow2-node-create.c): the image laid out in an
 * existing node, from QMP's BlockdevCreateOptionsQcow2.  Called by
 * block/create.c's blockdev_co_create(); private to block/.
 */
#ifndef STRATA_QCOW2_NODE_CREATE_H
#define STRATA_QCOW2_NODE_CREATE_H

#include <jansson.h>
#include <glib.h>
#include "strata/coroutine.h"

int coroutine_fn qcow2_co_create_on_node(json_t *options, GError **errp);

#endif
