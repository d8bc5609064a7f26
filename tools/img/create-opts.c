/*
 * qemu-img's checks and help on -o option lists (the options themselves:
 * tools/common/create-opts.c).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include "img.h"

bool img_has_help_option(const char *params)
{
    const char *p = params;

    while (*p) {
        size_t len = strcspn(p, "=,");
        bool bare = p[len] != '=';
        char *value = NULL;

        if (bare && ((len == 4 && !strncmp(p, "help", 4)) ||
                     (len == 1 && p[0] == '?'))) {
            return true;
        }
        p += len;
        if (*p == '=') {
            p = tool_qemuopts_value(p + 1, &value);
            g_free(value);
        }
        if (*p == ',') {
            p++;
        }
    }
    return false;
}

bool img_is_valid_option_list(const char *params)
{
    size_t len = strlen(params), i;

    if (!params[0] || params[0] == ',') {
        return false;
    }
    /* An odd number of trailing commas ends in a lone separator. */
    for (i = len; i > 0 && params[i - 1] == ','; i--) {
    }
    return (len - i) % 2 == 0;
}

/* -o help: the format's options, with the protocol's when a target is named. */
int img_print_create_help(const char *filename, const char *fmt)
{
    const BlockDriver *drv = driver_find(fmt);
    ImgOptDesc *list;

    if (!drv) {
        tool_error("Unknown file format '%s'", fmt);
        return EXIT_FAILURE;
    }
    if (!driver_has(drv, DRIVER_CAN_CREATE)) {
        tool_error("Format driver '%s' does not support image creation", fmt);
        return EXIT_FAILURE;
    }
    list = img_create_opts_for(drv);
    if (filename) {
        GError *err = NULL;
        const BlockDriver *proto = img_find_protocol(filename, &err);
        ImgOptDesc *plist;

        if (!proto) {
            tool_error_gerror(err, "%s", "");
            g_free(list);
            return EXIT_FAILURE;
        }
        if (!driver_has(proto, DRIVER_CAN_CREATE)) {
            tool_error("Protocol driver '%s' does not support image creation",
                       driver_format_name(proto));
            g_free(list);
            return EXIT_FAILURE;
        }
        plist = img_create_opts_for(proto);
        list = img_create_opts_append(list, plist);
        g_free(plist);
        printf("Supported options:\n");
    } else {
        printf("Supported %s options:\n", fmt);
    }
    img_create_opts_print_help(list);
    if (!filename) {
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    }
    g_free(list);
    return EXIT_SUCCESS;
}

bool img_append_option_list(char **options, const char *arg)
{
    if (!img_is_valid_option_list(arg)) {
        tool_error("Invalid option list: %s", arg);
        return false;
    }
    if (*options) {
        char *joined = g_strdup_printf("%s,%s", *options, arg);
        g_free(*options);
        *options = joined;
    } else {
        *options = g_strdup(arg);
    }
    return true;
}
