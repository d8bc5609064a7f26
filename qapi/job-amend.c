/*
 * x-blockdev-amend as a job (QEMU 7.2's "amend" job): the options of an
 * open image change in the job's coroutine.  QMP's amend options are not
 * qemu-img amend's: for qcow2 only the LUKS key slots of an encrypted
 * image can change, with messages of their own.  As QEMU's, the job
 * does not drain the node: a key slot change is the header's business.
 */
#include <errno.h>
#include <string.h>
#include "strata/backend.h"
#include "strata/block-ops.h"
#include "strata/block.h"
#include "strata/create.h"
#include "strata/error.h"
#include "strata/job.h"
#include "qapi-commands.h"
#include "qapi-visit.h"
#include "job-settle.h"

typedef struct AmendJob {
    Job common;
    BlockNode *bs;
    BlockBackend *writer;        /* luks: write access to the header */
    json_t *options;             /* BlockdevAmendOptions, driver removed */
    bool qcow2;
    bool force;
} AmendJob;

/* The qcow2 header's encryption method, as info reports it ("luks"). */
static bool qcow2_crypt_is_luks(BlockNode *bs)
{
    json_t *info = node_get_specific_info(bs, NULL);
    json_t *enc = json_object_get(info, "encrypt");
    const char *fmt = json_string_value(json_object_get(enc, "format"));
    bool luks = fmt && !strcmp(fmt, "luks");
    json_decref(info);
    return luks;
}

/*
 * QEMU's qcow2 amend through QMP: only "encrypt", and only on a LUKS
 * image; the key slot change itself is the driver's (node_co_amend), which
 * takes the LUKS options by their prefixed creation names.
 */
static int coroutine_fn amend_qcow2(AmendJob *s, GError **errp)
{
    json_t *enc = json_object_get(s->options, "encrypt");
    if (!enc) {
        return 0;
    }
    if (!node_is_encrypted(s->bs)) {
        error_setg(errp, "image is not encrypted, can't amend");
        return -EOPNOTSUPP;
    }
    const char *fmt = json_string_value(json_object_get(enc, "format"));
    if (!fmt || strcmp(fmt, "luks")) {
        error_setg(errp, "Amend can't be used to change the qcow2 "
                   "encryption format");
        return -EOPNOTSUPP;
    }
    if (!qcow2_crypt_is_luks(s->bs)) {
        error_setg(errp, "Only LUKS encryption options can be amended for "
                   "qcow2 with blockdev-amend");
        return -EOPNOTSUPP;
    }
    json_t *flat = blockdev_encrypt_flat(enc);
    int ret = node_co_amend(s->bs, flat, s->force, errp);
    json_decref(flat);
    return ret;
}

static int coroutine_fn amend_run(Job *job, GError **errp)
{
    AmendJob *s = (AmendJob *)job;
    job_progress_set_remaining(job, 1);
    int ret = s->qcow2 ? amend_qcow2(s, errp)
                       : node_co_amend(s->bs, s->options, s->force, errp);
    job_progress_update(job, 1);
    return ret;
}

static void amend_free(Job *job)
{
    AmendJob *s = (AmendJob *)job;
    json_decref(s->options);
    if (s->writer) {
        blk_unref(s->writer);
    }
    node_unref(s->bs);
}

static const JobDriver amend_job_driver = {
    .instance_size = sizeof(AmendJob),
    .job_type = JOB_TYPE_AMEND,
    .run = amend_run,
    .free = amend_free,
};

/* options: BlockdevAmendOptions as JSON (borrowed). */
static bool amend_start(const char *job_id, const char *node_name,
                        json_t *options, bool force, GError **errp)
{
    const char *fmt = json_string_value(json_object_get(options, "driver"));
    BlockNode *bs = node_find(node_name);
    if (!bs) {
        error_setg(errp, "Cannot find device='' nor node-name='%s'",
                   node_name);
        return false;
    }
    const BlockDriver *drv = driver_find(fmt);
    if (!drv) {
        error_setg(errp, "Block driver '%s' not found or not supported", fmt);
        return false;
    }
    if (node_get_driver(bs) != drv) {
        error_setg(errp, "x-blockdev-amend doesn't support changing the "
                   "block driver");
        return false;
    }
    /* The formats whose QEMU driver amends through QMP. */
    bool qcow2 = !strcmp(fmt, "qcow2");
    if (!qcow2 && strcmp(fmt, "luks")) {
        error_setg(errp, "Driver does not support x-blockdev-amend");
        return false;
    }
    AmendJob *s = job_create(job_id, &amend_job_driver, NULL,
                             JOB_MANUAL_DISMISS, NULL, NULL, errp);
    if (!s) {
        return false;
    }
    node_ref(bs);
    s->bs = bs;
    s->options = json_deep_copy(options);
    json_object_del(s->options, "driver");
    s->qcow2 = qcow2;
    s->force = force;
    if (!qcow2) {
        /*
         * A luks node writes to its file only what its users write, so the
         * header needs a user that writes for as long as the job lives
         * (QEMU's luks takes the permission in its amend pre-run).
         */
        s->writer = blk_new(BLK_PERM_WRITE, BLK_PERM_ALL);
        if (!blk_insert_node(s->writer, bs, errp)) {
            blk_unref(s->writer);
            s->writer = NULL;
            job_early_fail(&s->common);
            return false;
        }
    }
    job_start(&s->common);
    qmp_job_settle(job_id);
    return true;
}

void qmp_x_blockdev_amend(const char *job_id, const char *node_name,
                          BlockdevAmendOptions *options, bool has_force,
                          bool force, GError **errp)
{
    json_t *opts = qapi_BlockdevAmendOptions_to_json(options);
    amend_start(job_id, node_name, opts, has_force && force, errp);
    json_decref(opts);
}
