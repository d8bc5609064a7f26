/*
 * blockdev-create: creating an image from QMP's BlockdevCreateOptions,
 * on nodes that already exist (QEMU 7.2's bdrv_co_create), as opposed
 * to image_create() (strata-img create: a format creates its own file by
 * name).  The job around it is in strata/job.h (blockdev_create_job()).
 *
 * options is the BlockdevCreateOptions object in its QMP form: "driver"
 * plus that driver's members with their QMP names ("extent-size-hint",
 * "cluster-size", "backing-fmt", ...), numbers as JSON integers, booleans
 * as JSON booleans.  Supported drivers: file, qcow2, luks.
 */
#ifndef STRATA_CREATE_H
#define STRATA_CREATE_H

#include <glib.h>
#include <jansson.h>
#include "strata/block.h"

/*
 * Can blockdev-create make images with driver?  QEMU's errors: "Block
 * driver 'x' not found or not supported", "Driver does not support
 * blockdev-create".
 */
bool blockdev_create_check_driver(const char *driver, GError **errp);

/*
 * Create the image (coroutine context): 0 or -errno with *errp set in
 * QEMU 7.2's words.  Does not take ownership of options.
 */
int coroutine_fn blockdev_co_create(json_t *options, GError **errp);

/*
 * A BlockdevRef: a node name (the node, referenced) or an object of
 * blockdev-add options (a new node, opened read-write unless it says
 * read-only).  The caller drops the reference with node_unref().
 */
BlockNode *blockdev_ref_open(json_t *ref, GError **errp);

/*
 * QMP's qcow2 "encrypt" object (creation or amendment: "format" and the
 * crypto members) as the flat "encrypt.key-secret", "encrypt.cipher-alg",
 * ... options that qemu-img passes and the qcow2 driver reads; "format"
 * is left out.  A new object; encrypt is borrowed.
 */
json_t *blockdev_encrypt_flat(json_t *encrypt);

#endif
