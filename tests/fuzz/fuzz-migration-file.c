/*
 * libFuzzer target: any bytes, read as a migration file (strata's or
 * QEMU's, mapped-ram).  The walk over the stream (header, configuration,
 * RAM section, block list, mapped-ram headers, commands, footers, the JSON
 * description QEMU appends) ends in a description or an error, never a
 * crash, a hang or a sanitizer report; when it accepts the file, the blocks
 * it names (up to 4 MiB each) are loaded into memory of their size over
 * two channels, which also ends in success or an error; then its device
 * state streams (x-strata-state sections, docs/migration.md "Device
 * state") are handed to /dev/null, every other one registered and the
 * rest reported as unread.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <fcntl.h>

#include "strata/device-state.h"
#include "strata/mapped-ram.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-migration", MFD_CLOEXEC);
    GError *err = NULL;

    if (fd < 0 || write(fd, data, size) != (ssize_t)size) {
        abort();
    }
    MrFileInfo *info = mr_file_parse(fd, 0, &err);
    if (!info) {
        g_clear_error(&err);
        close(fd);
        return 0;
    }
    for (unsigned i = 0; i < info->nb_blocks; i++) {
        if (info->blocks[i].used <= (4u << 20)) {
            info->blocks[i].host = g_malloc0(info->blocks[i].used);
        }
    }
    int fds[2] = { fd, fd };
    MrTarget t = { .fd = fd, .chan_fds = fds, .nb_chan = 2 };
    MrParams p = { .channels = 2 };
    MrStats st = { 0 };
    atomic_bool cancel = false;
    if (!mr_load(&t, info, &p, &st, &cancel, &err)) {
        g_clear_error(&err);
    }
    DsSet *ds = ds_set_new();
    for (unsigned i = 0; i < info->states->len; i += 2) {
        MrDevState *d = info->states->pdata[i];
        ds_set_add(ds, d->id, open("/dev/null", O_WRONLY | O_CLOEXEC),
                   d->iterative);
    }
    GPtrArray *unread = g_ptr_array_new_with_free_func(g_free);
    if (!ds_load(ds, info, fd, &st, &cancel, unread, &err)) {
        g_clear_error(&err);
    }
    for (unsigned i = 0; i < ds_set_count(ds); i++) {
        if (ds_set_get(ds, i)->fd >= 0) {
            close(ds_set_get(ds, i)->fd);
        }
    }
    ds_set_free(ds);
    g_ptr_array_unref(unread);
    for (unsigned i = 0; i < info->nb_blocks; i++) {
        g_free(info->blocks[i].host);
    }
    mr_file_info_free(info);
    close(fd);
    return 0;
}
