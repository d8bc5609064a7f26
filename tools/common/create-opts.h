/*
 * Creation options as qemu-img presents them (create-opts.c): shared by
 * strata-img and the daemon's drive-mirror / drive-backup, which print
 * the same "Formatting ..." line.
 */
#ifndef STRATA_TOOLS_CREATE_OPTS_H
#define STRATA_TOOLS_CREATE_OPTS_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>
#include <jansson.h>
#include "strata/block-ops.h"

typedef enum {
    IMG_OPT_STRING,
    IMG_OPT_BOOL,
    IMG_OPT_NUMBER,
    IMG_OPT_SIZE,
} ImgOptType;

typedef struct ImgOptDesc {
    const char *name;
    ImgOptType type;
    const char *help;      /* NULL: listed without a description */
    const char *def_value; /* printed in "Formatting ..." when not set */
} ImgOptDesc;

/*
 * The creation options of driver `drv` in qemu-img's order (the order of
 * the "Formatting" line).  Returns a NULL-name-terminated array that the
 * caller frees with g_free (the strings are static).
 */
ImgOptDesc *img_create_opts_for(const BlockDriver *drv);
/* Append src's options that dst lacks (qemu_opts_append); frees dst. */
ImgOptDesc *img_create_opts_append(ImgOptDesc *dst, const ImgOptDesc *src);
/* Print the descriptions sorted by name, qemu's "-o help" layout. */
void img_create_opts_print_help(const ImgOptDesc *list);

/*
 * A parsed -o option list: values per option in `list`, parsed and
 * checked against its type the way QemuOpts does.
 */
typedef struct ImgOptValue {
    const ImgOptDesc *desc;
    char *str;          /* as given (bools, strings) */
    uint64_t num;       /* sizes and numbers */
    bool hex_suffix;    /* a size like 0x10M (QEMU warns twice) */
} ImgOptValue;

typedef struct ImgOpts {
    const ImgOptDesc *list;
    GPtrArray *values;  /* ImgOptValue*, in the order first set */
} ImgOpts;

ImgOpts *img_opts_new(const ImgOptDesc *list);
void img_opts_free(ImgOpts *opts);
/* QemuOpts' "a=b,flag,nofoo" syntax; unknown names and bad values fail. */
bool img_opts_parse(ImgOpts *opts, const char *params, GError **errp);
ImgOptValue *img_opts_find(ImgOpts *opts, const char *name);
/* Set one option from a string (type-checked); false + errp if unknown. */
bool img_opts_set(ImgOpts *opts, const char *name, const char *value,
                  GError **errp);
bool img_opts_set_number(ImgOpts *opts, const char *name, uint64_t value);
/* " name=value" for each set (or defaulted) option, in list order. */
char *img_opts_to_string(ImgOpts *opts);
/* The values as driver options (sizes/numbers as integers). */
json_t *img_opts_to_json(ImgOpts *opts);

/*
 * The "Formatting 'FILENAME', fmt=FMT ..." line for a new image with
 * `size` and an optional backing file, on stdout (bdrv_img_create's).
 */
void img_print_formatting(const char *filename, const char *fmt,
                          uint64_t size, const char *backing_file,
                          const char *backing_fmt);

#endif
