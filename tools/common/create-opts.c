/*
 * Creation options (-o) as qemu-img presents them.
 *
 * A driver lists the names of the creation options it takes
 * (BlockDriver.create_opts); how the tool shows and checks them (type,
 * description, default shown in the "Formatting ..." line, and the order of
 * that line) is tool presentation and lives in the table below, one block
 * per driver in QEMU's order.  A driver missing from the table still works:
 * its names are used in its own order, typed by name.
 *
 * Values are parsed and type-checked here, before anything is created,
 * because qemu-img rejects a bad -o list before it prints "Formatting".
 * Shared with the daemon: drive-mirror and drive-backup print the same
 * "Formatting ..." line when they create their target.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include <inttypes.h>
#include "tool-common.h"
#include "create-opts.h"

typedef struct DriverOpts {
    const char *driver;
    const ImgOptDesc *opts;
} DriverOpts;

static const ImgOptDesc raw_opts[] = {
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { NULL },
};

static const ImgOptDesc file_opts[] = {
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "nocow", IMG_OPT_BOOL,
      "Turn off copy-on-write (valid only on btrfs)", NULL },
    { "preallocation", IMG_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", NULL },
    { "extent_size_hint", IMG_OPT_SIZE,
      "Extent size hint for the image file, 0 to disable", NULL },
    { NULL },
};

/* qcow2_create_opts in QEMU 7.2's order: encryption first, size later. */
static const ImgOptDesc qcow2_opts[] = {
    { "encryption", IMG_OPT_BOOL, "Encrypt the image with format 'aes'. "
      "(Deprecated in favor of encrypt.format=aes)", NULL },
    { "encrypt.format", IMG_OPT_STRING,
      "Encrypt the image, format choices: 'aes', 'luks'", NULL },
    { "encrypt.key-secret", IMG_OPT_STRING,
      "ID of secret providing qcow AES key or LUKS passphrase", NULL },
    { "encrypt.cipher-alg", IMG_OPT_STRING,
      "Name of encryption cipher algorithm", NULL },
    { "encrypt.cipher-mode", IMG_OPT_STRING,
      "Name of encryption cipher mode", NULL },
    { "encrypt.ivgen-alg", IMG_OPT_STRING, "Name of IV generator algorithm",
      NULL },
    { "encrypt.ivgen-hash-alg", IMG_OPT_STRING,
      "Name of IV generator hash algorithm", NULL },
    { "encrypt.hash-alg", IMG_OPT_STRING, "Name of encryption hash algorithm",
      NULL },
    { "encrypt.iter-time", IMG_OPT_NUMBER,
      "Time to spend in PBKDF in milliseconds", NULL },
    { "cluster_size", IMG_OPT_SIZE, "qcow2 cluster size", "65536" },
    { "extended_l2", IMG_OPT_BOOL, "Extended L2 tables", "off" },
    { "preallocation", IMG_OPT_STRING, "Preallocation mode (allowed values: "
      "off, metadata, falloc, full)", NULL },
    { "compression_type", IMG_OPT_STRING,
      "Compression method used for image cluster compression", "zlib" },
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "compat", IMG_OPT_STRING, "Compatibility level (v2 [0.10] or v3 [1.1])",
      NULL },
    { "backing_file", IMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", IMG_OPT_STRING, "Image format of the base image", NULL },
    { "data_file", IMG_OPT_STRING, "File name of an external data file",
      NULL },
    { "data_file_raw", IMG_OPT_BOOL,
      "The external data file must stay valid as a raw image", NULL },
    { "lazy_refcounts", IMG_OPT_BOOL, "Postpone refcount updates", "off" },
    { "refcount_bits", IMG_OPT_NUMBER, "Width of a reference count entry in "
      "bits", "16" },
    { NULL },
};

/* block_crypto_create_opts_luks, in QEMU's order. */
static const ImgOptDesc luks_opts[] = {
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "key-secret", IMG_OPT_STRING,
      "ID of the secret that provides the keyslot passphrase", NULL },
    { "cipher-alg", IMG_OPT_STRING, "Name of encryption cipher algorithm",
      NULL },
    { "cipher-mode", IMG_OPT_STRING, "Name of encryption cipher mode", NULL },
    { "ivgen-alg", IMG_OPT_STRING, "Name of IV generator algorithm", NULL },
    { "ivgen-hash-alg", IMG_OPT_STRING, "Name of IV generator hash algorithm",
      NULL },
    { "hash-alg", IMG_OPT_STRING, "Name of encryption hash algorithm", NULL },
    { "iter-time", IMG_OPT_NUMBER, "Time to spend in PBKDF in milliseconds",
      NULL },
    { NULL },
};

static const DriverOpts driver_opts[] = {
    { "raw", raw_opts },
    { "file", file_opts },
    { "qcow2", qcow2_opts },
    { "luks", luks_opts },
};

/* Types for names of drivers that have no row above. */
static const ImgOptDesc generic_opts[] = {
    { "size", IMG_OPT_SIZE, "Virtual disk size", NULL },
    { "cluster_size", IMG_OPT_SIZE, NULL, NULL },
    { "extent_size_hint", IMG_OPT_SIZE, NULL, NULL },
    { "nocow", IMG_OPT_BOOL, NULL, NULL },
    { "lazy_refcounts", IMG_OPT_BOOL, NULL, NULL },
    { "extended_l2", IMG_OPT_BOOL, NULL, NULL },
    { "refcount_bits", IMG_OPT_NUMBER, NULL, NULL },
    { NULL },
};

static size_t opts_len(const ImgOptDesc *list)
{
    size_t n = 0;

    while (list && list[n].name) {
        n++;
    }
    return n;
}

static const ImgOptDesc *find_desc(const ImgOptDesc *list, const char *name)
{
    for (size_t i = 0; list && list[i].name; i++) {
        if (!strcmp(list[i].name, name)) {
            return &list[i];
        }
    }
    return NULL;
}

ImgOptDesc *img_create_opts_for(const BlockDriver *drv)
{
    const char *const *names = driver_create_opts(drv);
    ImgOptDesc *list;
    size_t n = 0;

    for (size_t i = 0; i < G_N_ELEMENTS(driver_opts); i++) {
        if (!strcmp(driver_opts[i].driver, driver_format_name(drv))) {
            return img_create_opts_append(NULL, driver_opts[i].opts);
        }
    }
    while (names && names[n]) {
        n++;
    }
    list = g_new0(ImgOptDesc, n + 1);
    for (size_t i = 0; i < n; i++) {
        const ImgOptDesc *g = find_desc(generic_opts, names[i]);
        list[i] = g ? *g : (ImgOptDesc){ names[i], IMG_OPT_STRING, NULL, NULL };
        list[i].name = names[i];
    }
    return list;
}

ImgOptDesc *img_create_opts_append(ImgOptDesc *dst, const ImgOptDesc *src)
{
    size_t n = opts_len(dst), m = opts_len(src), k = n;
    ImgOptDesc *list = g_new0(ImgOptDesc, n + m + 1);

    if (n) {
        memcpy(list, dst, n * sizeof(*dst));
    }
    for (size_t i = 0; i < m; i++) {
        if (!find_desc(list, src[i].name)) {
            list[k++] = src[i];
        }
    }
    g_free(dst);
    return list;
}

static const char *type_name(ImgOptType type)
{
    switch (type) {
    case IMG_OPT_BOOL:
        return "bool (on/off)";
    case IMG_OPT_NUMBER:
        return "num";
    case IMG_OPT_SIZE:
        return "size";
    case IMG_OPT_STRING:
    default:
        return "str";
    }
}

static int desc_cmp(const void *a, const void *b)
{
    return strcmp(((const ImgOptDesc *)a)->name, ((const ImgOptDesc *)b)->name);
}

void img_create_opts_print_help(const ImgOptDesc *list)
{
    size_t n = opts_len(list);
    ImgOptDesc *sorted = g_new0(ImgOptDesc, n + 1);

    if (n) {
        memcpy(sorted, list, n * sizeof(*list));
    }
    qsort(sorted, n, sizeof(*sorted), desc_cmp);
    for (size_t i = 0; i < n; i++) {
        char *head = g_strdup_printf("%s=<%s>", sorted[i].name,
                                     type_name(sorted[i].type));
        if (sorted[i].help) {
            printf("  %-22s - %s\n", head, sorted[i].help);
        } else {
            printf("  %s\n", head);
        }
        g_free(head);
    }
    g_free(sorted);
}

/* ---- Parsing ---- */

ImgOpts *img_opts_new(const ImgOptDesc *list)
{
    ImgOpts *opts = g_new0(ImgOpts, 1);

    opts->list = list;
    opts->values = g_ptr_array_new();
    return opts;
}

static void value_free(ImgOptValue *v)
{
    g_free(v->str);
    g_free(v);
}

void img_opts_free(ImgOpts *opts)
{
    if (!opts) {
        return;
    }
    for (guint i = 0; i < opts->values->len; i++) {
        value_free(opts->values->pdata[i]);
    }
    g_ptr_array_free(opts->values, true);
    g_free(opts);
}

ImgOptValue *img_opts_find(ImgOpts *opts, const char *name)
{
    for (guint i = 0; i < opts->values->len; i++) {
        ImgOptValue *v = opts->values->pdata[i];
        if (!strcmp(v->desc->name, name)) {
            return v;
        }
    }
    return NULL;
}

static void store(ImgOpts *opts, ImgOptValue *nv)
{
    for (guint i = 0; i < opts->values->len; i++) {
        ImgOptValue *v = opts->values->pdata[i];
        if (v->desc == nv->desc) {
            value_free(v);
            opts->values->pdata[i] = nv;
            return;
        }
    }
    g_ptr_array_add(opts->values, nv);
}

/* "0x10M": QEMU parses such a size twice and warns each time. */
static bool is_hex_with_suffix(const char *s)
{
    size_t len;

    while (g_ascii_isspace(*s)) {
        s++;
    }
    len = strlen(s);
    return (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) && len > 2 &&
           strchr("bBkKmMgGtTpPeE", s[len - 1]);
}

bool img_opts_set(ImgOpts *opts, const char *name, const char *value,
                  GError **errp)
{
    const ImgOptDesc *desc = find_desc(opts->list, name);
    ImgOptValue *v;
    char *end;
    int ret;

    if (!desc) {
        error_setg(errp, "Invalid parameter '%s'", name);
        return false;
    }
    v = g_new0(ImgOptValue, 1);
    v->desc = desc;
    v->str = g_strdup(value);
    switch (desc->type) {
    case IMG_OPT_BOOL:
        if (strcmp(value, "on") && strcmp(value, "yes") &&
            strcmp(value, "true") && strcmp(value, "y") &&
            strcmp(value, "off") && strcmp(value, "no") &&
            strcmp(value, "false") && strcmp(value, "n")) {
            error_setg(errp, "Parameter '%s' expects 'on' or 'off'", name);
            value_free(v);
            return false;
        }
        v->num = !strcmp(value, "on") || !strcmp(value, "yes") ||
                 !strcmp(value, "true") || !strcmp(value, "y");
        break;
    case IMG_OPT_NUMBER:
        /* strtoull as qemu_strtou64: base 0, "-1" wraps around. */
        errno = 0;
        v->num = strtoull(value, &end, 0);
        if (errno == ERANGE) {
            error_setg(errp, "Value '%s' is too large for parameter '%s'",
                       value, name);
            value_free(v);
            return false;
        }
        if (end == value || *end) {
            error_setg(errp, "Parameter '%s' expects a number", name);
            value_free(v);
            return false;
        }
        break;
    case IMG_OPT_SIZE:
        ret = tool_strtosz(value, NULL, &v->num);
        if (ret == -ERANGE) {
            error_setg(errp, "Value '%s' is out of range for parameter '%s'",
                       value, name);
            value_free(v);
            return false;
        } else if (ret < 0) {
            error_setg(errp, "Parameter '%s' expects a non-negative number "
                       "below 2^64\nOptional suffix k, M, G, T, P or E means "
                       "kilo-, mega-, giga-, tera-, peta-\nand exabytes, "
                       "respectively.", name);
            value_free(v);
            return false;
        }
        v->hex_suffix = is_hex_with_suffix(value);
        break;
    case IMG_OPT_STRING:
        break;
    }
    store(opts, v);
    return true;
}

bool img_opts_set_number(ImgOpts *opts, const char *name, uint64_t value)
{
    const ImgOptDesc *desc = find_desc(opts->list, name);
    ImgOptValue *v;

    if (!desc) {
        return false;
    }
    v = g_new0(ImgOptValue, 1);
    v->desc = desc;
    v->str = g_strdup_printf("%" PRId64, (int64_t)value);
    v->num = value;
    store(opts, v);
    return true;
}

bool img_opts_parse(ImgOpts *opts, const char *params, GError **errp)
{
    const char *p = params;

    while (*p) {
        char *name, *value;
        bool ok;

        /* qemu-img create does not warn about flags such as "nofoo". */
        p = tool_qemuopts_next(p, false, &name, &value);
        /* An "id" element names the option group; creation ignores it. */
        ok = !strcmp(name, "id") || img_opts_set(opts, name, value, errp);
        g_free(name);
        g_free(value);
        if (!ok) {
            return false;
        }
    }
    return true;
}

char *img_opts_to_string(ImgOpts *opts)
{
    GString *s = g_string_new(NULL);

    for (size_t i = 0; opts->list[i].name; i++) {
        const ImgOptDesc *desc = &opts->list[i];
        ImgOptValue *v = img_opts_find(opts, desc->name);
        const char *str = v ? v->str : desc->def_value;

        if (!str) {
            continue;
        }
        if (desc->type == IMG_OPT_STRING) {
            g_string_append_printf(s, " %s=", desc->name);
            for (const char *c = str; *c; c++) {
                if (*c == ',') {
                    g_string_append_c(s, ',');
                }
                g_string_append_c(s, *c);
            }
        } else if (v && (desc->type == IMG_OPT_SIZE ||
                         desc->type == IMG_OPT_NUMBER)) {
            /* Signed, as QEMU prints it: 2^63 and above come out negative. */
            g_string_append_printf(s, " %s=%" PRId64, desc->name,
                                   (int64_t)v->num);
        } else {
            g_string_append_printf(s, " %s=%s", desc->name, str);
        }
    }
    return g_string_free(s, false);
}

json_t *img_opts_to_json(ImgOpts *opts)
{
    json_t *obj = json_object();

    for (guint i = 0; i < opts->values->len; i++) {
        ImgOptValue *v = opts->values->pdata[i];
        json_t *j;

        switch (v->desc->type) {
        case IMG_OPT_BOOL:
            j = json_boolean(v->num);
            break;
        case IMG_OPT_NUMBER:
        case IMG_OPT_SIZE:
            /* jansson integers are signed: spell larger ones as text. */
            if (v->num <= INT64_MAX) {
                j = json_integer((json_int_t)v->num);
            } else if (v->desc->type == IMG_OPT_NUMBER) {
                /* As given: QEMU reads "-1" as a signed number later. */
                j = json_string(v->str);
            } else {
                char *t = g_strdup_printf("%" PRIu64, v->num);
                j = json_string(t);
                g_free(t);
            }
            break;
        case IMG_OPT_STRING:
        default:
            j = json_string_nocheck(v->str);
            break;
        }
        json_object_set_new(obj, v->desc->name, j ? j : json_null());
    }
    return obj;
}

/*
 * The format's options only: a protocol's options (file's nocow,
 * preallocation, ...) have no default, so they never show unless set.
 */
void img_print_formatting(const char *filename, const char *fmt,
                          uint64_t size, const char *backing_file,
                          const char *backing_fmt)
{
    const BlockDriver *drv = driver_find(fmt);
    ImgOptDesc *list;
    ImgOpts *opts;
    char *line;

    /* An unknown format fails before the line, as in bdrv_img_create. */
    if (!drv) {
        return;
    }
    list = img_create_opts_for(drv);
    opts = img_opts_new(list);

    img_opts_set_number(opts, "size", size);
    if (backing_file) {
        img_opts_set(opts, "backing_file", backing_file, NULL);
    }
    if (backing_fmt) {
        img_opts_set(opts, "backing_fmt", backing_fmt, NULL);
    }
    line = img_opts_to_string(opts);
    printf("Formatting '%s', fmt=%s%s\n", filename, fmt, line);
    fflush(stdout);
    g_free(line);
    img_opts_free(opts);
    g_free(list);
}
