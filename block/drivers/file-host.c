/*
 * The "host_device" and "host_cdrom" protocol drivers: the file driver's
 * code (file.c) run on a block device or a CD-ROM drive.
 */
#include <fcntl.h>
#include <linux/cdrom.h>
#include <sys/ioctl.h>
#include "file-int.h"

static int hdev_open(BlockNode *bs, json_t *options, int flags, GError **errp)
{
    return file_open_common(bs, options, flags, true, errp);
}

static int cdrom_open(BlockNode *bs, json_t *options, int flags,
                      GError **errp)
{
    FileState *s = bs->opaque;

    s->extra_open_flags = O_NONBLOCK;
    return file_open_common(bs, options, flags, true, errp);
}

static bool hdev_parse_filename(const char *filename, json_t *options,
                                GError **errp)
{
    return file_strip_prefix(filename, "host_device:", options);
}

static bool cdrom_parse_filename(const char *filename, json_t *options,
                                 GError **errp)
{
    return file_strip_prefix(filename, "host_cdrom:", options);
}

const BlockDriver bdrv_host_device = {
    .format_name = "host_device",
    .protocol_name = "host_device",
    .instance_size = sizeof(FileState),
    .parse_filename = hdev_parse_filename,
    .open = hdev_open,
    .close = file_close,
    .refresh_limits = file_refresh_limits,
    .check_perm = file_check_perm,
    .set_perm = file_set_perm,
    .abort_perm_update = file_abort_perm_update,
    .reopen_prepare = file_reopen_prepare,
    .reopen_commit = file_reopen_commit,
    .reopen_abort = file_reopen_abort,
    .co_preadv = file_co_preadv,
    .co_pwritev = file_co_pwritev,
    .co_pwrite_zeroes = file_co_pwrite_zeroes,
    .co_pdiscard = file_co_pdiscard,
    .co_flush_to_disk = file_co_flush_to_disk,
    .co_truncate = file_co_truncate,
    .co_block_status = file_co_block_status,
    .getlength = file_getlength,
    .get_allocated_file_size = file_get_allocated_file_size,
    .get_file_id = file_get_file_id,
    .get_info = file_get_info,
    .supported_zero_flags = REQ_MAY_UNMAP | REQ_NO_FALLBACK,
};

static bool cdrom_is_inserted(BlockNode *bs)
{
    FileState *s = bs->opaque;

    return ioctl(s->fd, CDROM_DRIVE_STATUS, CDSL_CURRENT) == CDS_DISC_OK;
}

/*
 * A CD-ROM drive: a host device whose medium may be absent, so no zero
 * writes, discards or block status (as QEMU's host_cdrom), and a length
 * asked of the drive every time.
 */
const BlockDriver bdrv_host_cdrom = {
    .format_name = "host_cdrom",
    .protocol_name = "host_cdrom",
    .instance_size = sizeof(FileState),
    .parse_filename = cdrom_parse_filename,
    .open = cdrom_open,
    .close = file_close,
    .refresh_limits = file_refresh_limits,
    .check_perm = file_check_perm,
    .set_perm = file_set_perm,
    .abort_perm_update = file_abort_perm_update,
    .reopen_prepare = file_reopen_prepare,
    .reopen_commit = file_reopen_commit,
    .reopen_abort = file_reopen_abort,
    .co_preadv = file_co_preadv,
    .co_pwritev = file_co_pwritev,
    .co_flush_to_disk = file_co_flush_to_disk,
    .co_truncate = file_co_truncate,
    .getlength = file_getlength,
    .has_variable_length = true,
    .is_inserted = cdrom_is_inserted,
    .get_allocated_file_size = file_get_allocated_file_size,
};
