/*
 * qcow2 image creation (qcow2-create.c), for the driver table in qcow2.c:
 *
 *     .create = qcow2_co_create,
 *     .create_opts = qcow2_create_opts,
 *
 * Private to block/qcow2/.
 */
#ifndef STRATA_QCOW2_CREATE_H
#define STRATA_QCOW2_CREATE_H

#include <stdbool.h>
#include <stdint.h>
#include <jansson.h>
#include <glib.h>
#include "strata/block.h"

/*
 * Create a qcow2 image at filename, laid out byte for byte as QEMU 7.2's
 * qcow2 driver lays it out for the same options.  The contract is the
 * BlockDriver.create one (see block/create.c): runs in a coroutine, does
 * not take ownership of options, returns 0 or -errno with *errp set.
 *
 * options holds qemu-img's creation option names with typed values (as
 * tools/img/create-opts.c builds them): size, compat, backing_file,
 * backing_fmt, encryption, encrypt.*, cluster_size, data_file,
 * data_file_raw, extended_l2, preallocation, lazy_refcounts, refcount_bits,
 * compression_type, and the file protocol's nocow and extent_size_hint.
 * Like QEMU, a failure after the file was created deletes it (and the
 * external data file).
 */
int coroutine_fn qcow2_co_create(const char *filename, json_t *options,
                                 GError **errp);

/* The creation option names, NULL-terminated, in QEMU's order. */
extern const char *const qcow2_create_opts[];

/* ---- Between qcow2-create.c and qcow2-create-layout.c ---- */

/* Checked creation parameters, as qcow2_co_create() has settled them. */
typedef struct Qcow2CreateParams {
    uint64_t size;              /* a multiple of 512 (or wrapped to 0) */
    int version;                /* 2 or 3 */
    uint64_t cluster_size;      /* a power of two, 512 B to 2 MiB */
    int64_t refcount_bits;      /* a power of two, 1 to 64 */
    bool extl2, lazy, data_raw;
    int prealloc;               /* PreallocMode; not OFF with data_raw */
    int ctype;                  /* QCOW2_COMPRESSION_* */
    const char *backing_file;   /* NULL: none */
    const char *backing_fmt;
    const char *data_name;      /* the external data file's name, or NULL */
} Qcow2CreateParams;

/*
 * Lay out a qcow2 image in blk, a new empty file opened read-write with
 * writes beyond its end allowed, and data_blk (the external data file,
 * likewise, or NULL): header, refcount structures, L1 table and, as
 * p->prealloc says, L2 tables and data clusters.  0 or -errno with *errp
 * set (QEMU's message; -EFBIG when the image is too large).
 */
int coroutine_fn qcow2_create_layout(BlockBackend *blk, BlockBackend *data_blk,
                                     const Qcow2CreateParams *p,
                                     GError **errp);

/* qcow2-crypto.c: encrypt the freshly created image at path
 * (enc_format "luks" or "qcow"), as QEMU's last creation step. */
int coroutine_fn qcow2_crypto_create(const char *path, json_t *options,
                                     const char *enc_format, GError **errp);

#endif
