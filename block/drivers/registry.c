/* The built-in drivers, registered by name. */
#include <string.h>
#include "strata/block-driver.h"

extern const BlockDriver bdrv_raw;
extern const BlockDriver bdrv_null_co;
extern const BlockDriver bdrv_null_aio;
extern const BlockDriver bdrv_file;
extern const BlockDriver bdrv_host_device;
extern const BlockDriver bdrv_host_cdrom;
extern const BlockDriver bdrv_blkdebug;
extern const BlockDriver bdrv_qcow2;
extern const BlockDriver bdrv_compress;
extern const BlockDriver bdrv_mirror_top;
extern const BlockDriver bdrv_copy_on_read;
extern const BlockDriver bdrv_copy_before_write;
extern const BlockDriver bdrv_luks;
extern const BlockDriver bdrv_bochs;
extern const BlockDriver bdrv_quorum;
extern const BlockDriver bdrv_nbd;
extern const BlockDriver bdrv_nbd_tcp;
extern const BlockDriver bdrv_nbd_unix;
extern const BlockDriver bdrv_throttle;
extern const BlockDriver bdrv_preallocate;
extern const BlockDriver bdrv_snapshot_access;

static GPtrArray *drivers;
static void drivers_init(void);

void driver_register(const BlockDriver *drv)
{
    drivers_init();
    g_ptr_array_add(drivers, (gpointer)drv);
}

static void drivers_init(void)
{
    if (drivers) {
        return;
    }
    drivers = g_ptr_array_new();
    g_ptr_array_add(drivers, (gpointer)&bdrv_raw);
    g_ptr_array_add(drivers, (gpointer)&bdrv_null_co);
    g_ptr_array_add(drivers, (gpointer)&bdrv_null_aio);
    g_ptr_array_add(drivers, (gpointer)&bdrv_file);
    g_ptr_array_add(drivers, (gpointer)&bdrv_host_device);
    g_ptr_array_add(drivers, (gpointer)&bdrv_host_cdrom);
    g_ptr_array_add(drivers, (gpointer)&bdrv_blkdebug);
    g_ptr_array_add(drivers, (gpointer)&bdrv_qcow2);
    g_ptr_array_add(drivers, (gpointer)&bdrv_compress);
    g_ptr_array_add(drivers, (gpointer)&bdrv_mirror_top);
    g_ptr_array_add(drivers, (gpointer)&bdrv_copy_on_read);
    g_ptr_array_add(drivers, (gpointer)&bdrv_copy_before_write);
    g_ptr_array_add(drivers, (gpointer)&bdrv_luks);
    g_ptr_array_add(drivers, (gpointer)&bdrv_bochs);
    g_ptr_array_add(drivers, (gpointer)&bdrv_quorum);
    g_ptr_array_add(drivers, (gpointer)&bdrv_throttle);
    g_ptr_array_add(drivers, (gpointer)&bdrv_preallocate);
    g_ptr_array_add(drivers, (gpointer)&bdrv_snapshot_access);
    /* nbd+unix first: driver=nbd means it, as in QEMU (see nbd.c). */
    g_ptr_array_add(drivers, (gpointer)&bdrv_nbd_unix);
    g_ptr_array_add(drivers, (gpointer)&bdrv_nbd_tcp);
    g_ptr_array_add(drivers, (gpointer)&bdrv_nbd);
}

const BlockDriver *driver_find(const char *name)
{
    drivers_init();
    for (guint i = 0; i < drivers->len; i++) {
        const BlockDriver *drv = drivers->pdata[i];
        if (!strcmp(drv->format_name, name)) {
            return drv;
        }
    }
    return NULL;
}

const BlockDriver *driver_find_protocol(const char *proto)
{
    drivers_init();
    for (guint i = 0; i < drivers->len; i++) {
        const BlockDriver *drv = drivers->pdata[i];
        if (drv->protocol_name && !strcmp(drv->protocol_name, proto)) {
            return drv;
        }
    }
    return NULL;
}

const char **driver_list(void)
{
    drivers_init();
    const char **names = g_new0(const char *, drivers->len + 1);
    for (guint i = 0; i < drivers->len; i++) {
        names[i] = ((const BlockDriver *)drivers->pdata[i])->format_name;
    }
    return names;
}
