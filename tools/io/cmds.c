/*
 * strata-io command table, dispatch and the commands that move no data
 * (help, flush, truncate, length, info, alloc, map, reopen, breakpoints,
 * sleep, sigraise, abort).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/loop.h"
#include "../common/tool-common.h"
#include "io.h"

/* ---- Commands without data transfer ---- */

static int flush_f(BlockBackend *blk, int argc, char **argv)
{
    return blk_flush(blk);
}

static const IoCmd flush_cmd = {
    .name = "flush", .altname = "f", .func = flush_f,
    .oneline = "flush all in-core file state to disk",
};

static const IoCmd truncate_cmd;

static int truncate_f(BlockBackend *blk, int argc, char **argv)
{
    PreallocMode prealloc = PREALLOC_MODE_OFF;
    GError *err = NULL;
    int64_t offset;
    int c;

    while ((c = getopt(argc, argv, "m:")) != -1) {
        switch (c) {
        case 'm':
            for (prealloc = 0; prealloc < PREALLOC_MODE__MAX; prealloc++) {
                if (!strcmp(optarg, prealloc_mode_names[prealloc])) {
                    break;
                }
            }
            if (prealloc == PREALLOC_MODE__MAX) {
                tool_error("Invalid preallocation mode '%s'", optarg);
                return -EINVAL;
            }
            break;
        default:
            return io_usage_error(&truncate_cmd);
        }
    }
    if (optind >= argc) {
        /* qemu-io dereferences a missing offset; say how to call instead. */
        return io_usage_error(&truncate_cmd);
    }

    offset = tool_cvtnum(argv[optind]);
    if (offset < 0) {
        /* qemu-io names argv[1] here, even when that is "-m". */
        io_print_cvtnum_err(offset, argv[1]);
        return (int)offset;
    }
    int ret = blk_truncate(blk, offset, false, prealloc, &err);
    if (ret < 0) {
        if (err) {
            tool_error_gerror(err, "%s", "");
        } else {
            tool_error("%s", strerror(-ret));
        }
        return ret;
    }
    return 0;
}

static const IoCmd truncate_cmd = {
    .name = "truncate", .altname = "t", .func = truncate_f,
    .perm = BLK_PERM_WRITE | BLK_PERM_RESIZE,
    .argmin = 1, .argmax = 3,
    .args = "[-m prealloc_mode] off",
    .oneline = "truncates the current file at the given offset",
};

static int length_f(BlockBackend *blk, int argc, char **argv)
{
    int64_t size = blk_getlength(blk);
    char s1[64];

    if (size < 0) {
        printf("getlength: %s\n", strerror((int)-size));
        return (int)size;
    }
    io_cvtstr((double)size, s1, sizeof(s1));
    printf("%s\n", s1);
    return 0;
}

static const IoCmd length_cmd = {
    .name = "length", .altname = "l", .func = length_f,
    .oneline = "gets the length of the current file",
};

static int info_f(BlockBackend *blk, int argc, char **argv)
{
    BlockNode *bs = io_image_node(blk);
    const BlockDriver *drv = node_get_driver(bs);
    BlockDriverInfo bdi;
    GError *err = NULL;
    json_t *spec = NULL;
    char s1[64], s2[64];
    int ret;

    if (drv && driver_format_name(drv)) {
        printf("format name: %s\n", driver_format_name(drv));
    }
    if (drv && driver_protocol_name(drv)) {
        printf("format name: %s\n", driver_protocol_name(drv));
    }
    ret = node_get_info(bs, &bdi);
    if (ret) {
        return ret;
    }
    io_cvtstr((double)bdi.cluster_size, s1, sizeof(s1));
    io_cvtstr((double)bdi.vm_state_offset, s2, sizeof(s2));
    printf("cluster size: %s\n", s1);
    printf("vm state offset: %s\n", s2);

    if (drv) {
        spec = node_get_specific_info(bs, &err);
        if (err) {
            tool_error_gerror(err, "%s", "");
            json_decref(spec);
            return -EIO;
        }
    }
    if (spec) {
        printf("Format specific information:\n");
        tool_dump_specific_info(spec, 1);
        json_decref(spec);
    }
    return 0;
}

static const IoCmd info_cmd = {
    .name = "info", .altname = "i", .func = info_f,
    .oneline = "prints information about the current file",
};


static int alloc_f(BlockBackend *blk, int argc, char **argv)
{
    BlockNode *bs = blk_node(blk);
    int64_t offset, start, remaining, count, num, sum_alloc;
    char s1[64];
    int ret;

    start = offset = io_cvtnum(argv[1]);
    if (offset < 0) {
        return (int)offset;
    }
    if (argc == 3) {
        count = io_cvtnum(argv[2]);
        if (count < 0) {
            return (int)count;
        }
    } else {
        count = 512;
    }

    remaining = count;
    sum_alloc = 0;
    while (remaining) {
        ret = node_is_allocated(bs, offset, remaining, &num);
        if (ret < 0) {
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        offset += num;
        remaining -= num;
        if (ret) {
            sum_alloc += num;
        }
        if (num == 0) {
            /* End of the image: report on what exists. */
            count -= remaining;
            remaining = 0;
        }
    }

    io_cvtstr((double)start, s1, sizeof(s1));
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n",
           sum_alloc, count, s1);
    return 0;
}

static const IoCmd alloc_cmd = {
    .name = "alloc", .altname = "a", .func = alloc_f,
    .argmin = 1, .argmax = 2,
    .args = "offset [count]",
    .oneline = "checks if offset is allocated in the file",
};

/* Merge consecutive extents with the same allocation state. */
static int map_is_allocated(BlockNode *bs, int64_t offset, int64_t bytes,
                            int64_t *pnum)
{
    int64_t num;
    int ret, firstret;

    ret = node_is_allocated(bs, offset, bytes, &num);
    if (ret < 0) {
        return ret;
    }
    firstret = ret;
    *pnum = num;
    while (bytes > 0 && ret == firstret) {
        offset += num;
        bytes -= num;
        ret = node_is_allocated(bs, offset, bytes, &num);
        if (ret == firstret && num) {
            *pnum += num;
        } else {
            break;
        }
    }
    return firstret;
}

static int map_f(BlockBackend *blk, int argc, char **argv)
{
    int64_t offset = 0, bytes, num;
    char s1[64], s2[64];
    int ret;

    bytes = blk_getlength(blk);
    if (bytes < 0) {
        tool_error("Failed to query image length: %s", strerror((int)-bytes));
        return (int)bytes;
    }
    while (bytes) {
        ret = map_is_allocated(blk_node(blk), offset, bytes, &num);
        if (ret < 0) {
            tool_error("Failed to get allocation status: %s", strerror(-ret));
            return ret;
        } else if (!num) {
            tool_error("Unexpected end of image");
            return -EIO;
        }
        io_cvtstr((double)num, s1, sizeof(s1));
        io_cvtstr((double)offset, s2, sizeof(s2));
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n",
               s1, (uint64_t)num, ret ? "    allocated" : "not allocated",
               s2, (uint64_t)offset);
        offset += num;
        bytes -= num;
    }
    return 0;
}

static const IoCmd map_cmd = {
    .name = "map", .func = map_f,
    .argmin = 0, .argmax = 0,
    .args = "",
    .oneline = "prints the allocated areas of a file",
};

static void reopen_help(void)
{
    printf(
"\n"
" Changes the open options of an already opened image\n"
"\n"
" Example:\n"
" 'reopen -o lazy-refcounts=on' - activates lazy refcount writeback on a qcow2 image\n"
"\n"
" -r, -- Reopen the image read-only\n"
" -w, -- Reopen the image read-write\n"
" -c, -- Change the cache mode to the given value\n"
" -o, -- Changes block driver options (cf. 'open' command)\n"
"\n");
}

static const IoCmd reopen_cmd;

/* QEMU's boolean spellings for a string option. */
static int parse_bool_str(const char *s, bool *out)
{
    if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") ||
        !strcmp(s, "y")) {
        *out = true;
    } else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false") ||
               !strcmp(s, "n")) {
        *out = false;
    } else {
        return -1;
    }
    return 0;
}

static int reopen_f(BlockBackend *blk, int argc, char **argv)
{
    BlockNode *bs = blk_node(blk);
    int flags = node_get_flags(bs);
    bool writethrough = !blk_enable_write_cache(blk);
    bool has_rw_option = false, has_cache_option = false;
    bool read_only;
    json_t *opts = NULL;
    json_t *ro;
    GError *err = NULL;
    int c;

    while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
        switch (c) {
        case 'c':
            if (tool_parse_cache_mode(optarg, &flags, &writethrough) < 0) {
                tool_error("Invalid cache option: %s", optarg);
                json_decref(opts);
                return -EINVAL;
            }
            has_cache_option = true;
            break;
        case 'o':
            if (!tool_qemuopts_parse(&opts, optarg, true, &err)) {
                tool_error_gerror(err, "%s", "");
                json_decref(opts);
                return -EINVAL;
            }
            break;
        case 'r':
        case 'w':
            if (has_rw_option) {
                tool_error("Only one -r/-w option may be given");
                json_decref(opts);
                return -EINVAL;
            }
            flags = c == 'r' ? flags & ~NODE_O_RDWR : flags | NODE_O_RDWR;
            has_rw_option = true;
            break;
        default:
            json_decref(opts);
            return io_usage_error(&reopen_cmd);
        }
    }
    if (optind != argc) {
        json_decref(opts);
        return io_usage_error(&reopen_cmd);
    }

    if (!(flags & NODE_O_RDWR)) {
        uint64_t perm, shared;

        /* Give up write access first, as qemu-io does, even if this fails. */
        blk_drain(blk);
        blk_get_perm(blk, &perm, &shared);
        blk_set_perm(blk, perm & ~(BLK_PERM_WRITE | BLK_PERM_WRITE_UNCHANGED),
                     shared, NULL);
    }
    if (!opts) {
        opts = json_object();
    }

    read_only = !(flags & NODE_O_RDWR);
    ro = json_object_get(opts, "read-only");
    if (ro) {
        if (has_rw_option) {
            tool_error("Cannot set both -r/-w and 'read-only'");
            json_decref(opts);
            return -EINVAL;
        }
        if (parse_bool_str(json_string_value(ro), &read_only) < 0) {
            tool_error("Parameter 'read-only' expects 'on' or 'off'");
            json_decref(opts);
            return -EINVAL;
        }
        json_object_del(opts, "read-only");
    }
    if (json_object_get(opts, "cache.direct") ||
        json_object_get(opts, "cache.no-flush")) {
        if (has_cache_option) {
            tool_error("Cannot set both -c and the cache options");
            json_decref(opts);
            return -EINVAL;
        }
    } else {
        json_object_set_new(opts, "cache.direct",
                            json_boolean(flags & NODE_O_NOCACHE));
        json_object_set_new(opts, "cache.no-flush",
                            json_boolean(flags & NODE_O_NO_FLUSH));
    }

    if (!node_reopen(bs, tool_qemuopts_nest(opts), read_only, &err)) {
        tool_error_gerror(err, "%s", "");
        return -EINVAL;
    }
    blk_set_enable_write_cache(blk, !writethrough);
    return 0;
}

static const IoCmd reopen_cmd = {
    .name = "reopen", .func = reopen_f,
    .argmin = 0, .argmax = -1,
    .args = "[(-r|-w)] [-c cache] [-o options]",
    .oneline = "reopens an image with new options",
    .help = reopen_help,
};

/* ---- blkdebug breakpoints: the first node down the tree that has them ---- */

static int break_f(BlockBackend *blk, int argc, char **argv)
{
    int ret = node_debug_breakpoint(blk_node(blk), argv[1], argv[2]);

    if (ret < 0) {
        printf("Could not set breakpoint: %s\n", strerror(-ret));
        return ret;
    }
    return 0;
}

static const IoCmd break_cmd = {
    .name = "break", .func = break_f,
    .argmin = 2, .argmax = 2,
    .args = "event tag",
    .oneline = "sets a breakpoint on event and tags the stopped request as tag",
};

static int remove_break_f(BlockBackend *blk, int argc, char **argv)
{
    int ret = node_debug_remove_breakpoint(blk_node(blk), argv[1]);

    if (ret < 0) {
        printf("Could not remove breakpoint %s: %s\n", argv[1],
               strerror(-ret));
        return ret;
    }
    return 0;
}

static const IoCmd remove_break_cmd = {
    .name = "remove_break", .func = remove_break_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "remove a breakpoint by tag",
};

static int resume_f(BlockBackend *blk, int argc, char **argv)
{
    int ret = node_debug_resume(blk_node(blk), argv[1]);

    if (ret < 0) {
        printf("Could not resume request: %s\n", strerror(-ret));
        return ret;
    }
    return 0;
}

static const IoCmd resume_cmd = {
    .name = "resume", .func = resume_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "resumes the request tagged as tag",
};

static int wait_break_f(BlockBackend *blk, int argc, char **argv)
{
    int ret;

    while ((ret = node_debug_is_suspended(blk_node(blk), argv[1])) == 0) {
        loop_iterate(true);
    }
    if (ret < 0) {
        /* qemu-io would wait forever here; nothing can ever stop. */
        printf("Could not wait for breakpoint: %s\n", strerror(-ret));
        return ret;
    }
    return 0;
}

static const IoCmd wait_break_cmd = {
    .name = "wait_break", .func = wait_break_f,
    .argmin = 1, .argmax = 1,
    .args = "tag",
    .oneline = "waits for the suspension of a request",
};

/* ---- Process control ---- */

static int abort_f(BlockBackend *blk, int argc, char **argv)
{
    abort();
}

static const IoCmd abort_cmd = {
    .name = "abort", .func = abort_f,
    .flags = IOCMD_NOFILE_OK,
    .oneline = "simulate a program crash using abort(3)",
};

static void sigraise_help(void)
{
    printf(
"\n"
" raises the given signal\n"
"\n"
" Example:\n"
" 'sigraise %i' - raises SIGTERM\n"
"\n"
" Invokes raise(signal), where \"signal\" is the mandatory integer argument\n"
" given to sigraise.\n"
"\n", SIGTERM);
}

static int sigraise_f(BlockBackend *blk, int argc, char **argv)
{
    int64_t sig = io_cvtnum(argv[1]);

    if (sig < 0) {
        return (int)sig;
    } else if (sig > NSIG) {
        printf("signal argument '%s' is too large to be a valid signal\n",
               argv[1]);
        return -EINVAL;
    }
    /* raise() may end the process without flushing stdio. */
    fflush(stdout);
    fflush(stderr);
    raise((int)sig);
    return 0;
}

static const IoCmd sigraise_cmd = {
    .name = "sigraise", .func = sigraise_f,
    .argmin = 1, .argmax = 1,
    .flags = IOCMD_NOFILE_OK,
    .args = "signal",
    .oneline = "raises a signal",
    .help = sigraise_help,
};

static gboolean sleep_expired(gpointer opaque)
{
    *(bool *)opaque = true;
    return G_SOURCE_REMOVE;
}

static int sleep_f(BlockBackend *blk, int argc, char **argv)
{
    char *end;
    long ms = strtol(argv[1], &end, 0);
    bool expired = false;
    GSource *timer;

    if (ms < 0 || *end != '\0') {
        printf("%s is not a valid number\n", argv[1]);
        return -EINVAL;
    }
    /* Sleep in the loop so that pending aio requests complete meanwhile. */
    timer = g_timeout_source_new(ms > G_MAXUINT ? G_MAXUINT : (guint)ms);
    g_source_set_callback(timer, sleep_expired, &expired, NULL);
    g_source_attach(timer, loop_context(loop_get()));
    while (!expired) {
        loop_iterate(true);
    }
    g_source_destroy(timer);
    g_source_unref(timer);
    return 0;
}

static const IoCmd sleep_cmd = {
    .name = "sleep", .func = sleep_f,
    .argmin = 1, .argmax = 1,
    .flags = IOCMD_NOFILE_OK,
    .oneline = "waits for the given value in milliseconds",
};

/* ---- The table and dispatch ---- */

static const IoCmd help_cmd;

static const IoCmd *const all_cmds[] = {
    &help_cmd, &io_cmd_read, &io_cmd_readv, &io_cmd_write, &io_cmd_writev,
    &io_cmd_aio_read, &io_cmd_aio_write, &io_cmd_aio_flush, &flush_cmd,
    &truncate_cmd, &length_cmd, &info_cmd, &io_cmd_discard, &alloc_cmd,
    &map_cmd, &reopen_cmd, &break_cmd, &remove_break_cmd, &resume_cmd,
    &wait_break_cmd, &abort_cmd, &sleep_cmd, &sigraise_cmd,
    &io_cmd_open, &io_cmd_close, &io_cmd_quit,
};
#define NCMDS G_N_ELEMENTS(all_cmds)

static const IoCmd *sorted_cmds[NCMDS];

static int cmd_name_cmp(const void *a, const void *b)
{
    return strcmp((*(const IoCmd *const *)a)->name,
                  (*(const IoCmd *const *)b)->name);
}

/* Commands are listed and completed in name order, as qemu-io does. */
static const IoCmd *const *cmd_table(void)
{
    if (!sorted_cmds[0]) {
        memcpy(sorted_cmds, all_cmds, sizeof(all_cmds));
        qsort(sorted_cmds, NCMDS, sizeof(sorted_cmds[0]), cmd_name_cmp);
    }
    return sorted_cmds;
}

static const IoCmd *find_command(const char *name)
{
    const IoCmd *const *t = cmd_table();

    for (size_t i = 0; i < NCMDS; i++) {
        if (!strcmp(t[i]->name, name) ||
            (t[i]->altname && !strcmp(t[i]->altname, name))) {
            return t[i];
        }
    }
    return NULL;
}

char **io_complete_commands(const char *prefix)
{
    const IoCmd *const *t = cmd_table();
    GPtrArray *out = g_ptr_array_new();

    for (size_t i = 0; i < NCMDS; i++) {
        if (g_str_has_prefix(t[i]->name, prefix)) {
            g_ptr_array_add(out, g_strdup(t[i]->name));
        }
    }
    g_ptr_array_add(out, NULL);
    return (char **)g_ptr_array_free(out, false);
}

void io_command_usage(const IoCmd *ct)
{
    printf("%s %s -- %s\n", ct->name, ct->args ? ct->args : "(null)",
           ct->oneline);
}

int io_usage_error(const IoCmd *ct)
{
    io_command_usage(ct);
    return -EINVAL;
}

static void help_oneline(const char *name, const IoCmd *ct)
{
    printf("%s ", name);
    if (ct->args) {
        printf("%s ", ct->args);
    }
    printf("-- %s\n", ct->oneline);
}

static int help_f(BlockBackend *blk, int argc, char **argv)
{
    const IoCmd *ct;

    if (argc < 2) {
        const IoCmd *const *t = cmd_table();

        for (size_t i = 0; i < NCMDS; i++) {
            help_oneline(t[i]->name, t[i]);
        }
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    ct = find_command(argv[1]);
    if (!ct) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_oneline(argv[1], ct);
    if (ct->help) {
        ct->help();
    }
    return 0;
}

static const IoCmd help_cmd = {
    .name = "help", .altname = "?", .func = help_f,
    .argmin = 0, .argmax = 1,
    .flags = IOCMD_GLOBAL,
    .args = "[command]",
    .oneline = "help for one or all commands",
};

static int run_cmd(const IoCmd *ct, int argc, char **argv)
{
    BlockBackend *blk = io_blk;

    if (!(ct->flags & (IOCMD_GLOBAL | IOCMD_NOFILE_OK)) && !blk) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    if (argc - 1 < ct->argmin || (ct->argmax != -1 && argc - 1 > ct->argmax)) {
        if (ct->argmax == -1) {
            fprintf(stderr, "bad argument count %d to %s, expected at least "
                    "%d arguments\n", argc - 1, argv[0], ct->argmin);
        } else if (ct->argmin == ct->argmax) {
            fprintf(stderr, "bad argument count %d to %s, expected %d "
                    "arguments\n", argc - 1, argv[0], ct->argmin);
        } else {
            fprintf(stderr, "bad argument count %d to %s, expected between "
                    "%d and %d arguments\n", argc - 1, argv[0], ct->argmin,
                    ct->argmax);
        }
        return -EINVAL;
    }
    /*
     * Take the permissions the command needs before it runs; without a
     * medium the command runs and fails with "No medium found", as QEMU's.
     */
    if (ct->perm && blk && blk_node(blk) && node_is_inserted(blk_node(blk))) {
        uint64_t perm, shared;

        blk_get_perm(blk, &perm, &shared);
        if (ct->perm & ~perm) {
            GError *err = NULL;
            if (!blk_set_perm(blk, perm | ct->perm, shared, &err)) {
                tool_error_gerror(err, "%s", "");
                return -EPERM;
            }
        }
    }
    optind = 0;
    opterr = 1;
    return ct->func(blk, argc, argv);
}

int io_run_command(const char *line)
{
    char *input = g_strdup(line);
    GPtrArray *args = g_ptr_array_new();
    char *p = input, *tok;
    int ret = 0;

    /* Words are separated by single spaces only, as in qemu-io. */
    while ((tok = strsep(&p, " ")) != NULL) {
        if (*tok) {
            g_ptr_array_add(args, tok);
        }
    }
    if (args->len) {
        int argc = (int)args->len;
        const IoCmd *ct;

        g_ptr_array_add(args, NULL);
        ct = find_command(args->pdata[0]);
        if (ct) {
            ret = run_cmd(ct, argc, (char **)args->pdata);
        } else {
            fprintf(stderr, "command \"%s\" not found\n",
                    (char *)args->pdata[0]);
            ret = -EINVAL;
        }
    }
    g_ptr_array_free(args, true);
    g_free(input);
    return ret;
}
