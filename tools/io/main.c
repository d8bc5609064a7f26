/*
 * strata-io: exercise the I/O path of one image, qemu-io style.
 *
 * Commands come from -c options (run in order, then exit) or, without -c,
 * from standard input: a line editor on a terminal, plain lines from a pipe.
 * The prompt is "<program name>> " ("strata-io> "), as qemu-io derives its
 * own from its name; tests keep an image open by piping commands in.
 * The exit status is 1 if any command failed, else 0.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/debug-event.h"
#include "strata/loop.h"
#include "../common/tool-common.h"
#include "io.h"

#ifdef HAVE_LIBEDIT
#include <editline/readline.h>
#endif

#ifndef STRATA_VERSION
#define STRATA_VERSION "0.1.0"
#endif

BlockBackend *io_blk;
bool io_quit;
bool io_image_opts;

/* How to open an image: qemu-io's open flags, spelled for our core. */
typedef struct OpenSpec {
    int flags;          /* NODE_O_NOCACHE, NODE_O_NO_FLUSH */
    bool read_only;     /* -r; otherwise openfile() adds NODE_O_RDWR */
    bool writethrough;  /* qemu-io's default: flush after every write */
    bool force_share;
    bool unmap;         /* discard=unmap, qemu-io's default */
    bool native_aio;    /* -k or -i native */
    bool io_uring;      /* -i io_uring */
    bool threads_aio;   /* -i threads: named because our default is io_uring */
    bool snapshot;      /* -s */
    bool copy_on_read;  /* -C */
} OpenSpec;

static void open_spec_init(OpenSpec *s)
{
    *s = (OpenSpec){ .writethrough = true, .unmap = true };
}

static int parse_aio_into(const char *mode, OpenSpec *s)
{
    const char *canonical;

    if (tool_parse_aio(mode, &canonical) < 0) {
        return -1;
    }
    /* As in QEMU the modes are flags: native wins over io_uring. */
    if (!strcmp(canonical, "native")) {
        s->native_aio = true;
    } else if (!strcmp(canonical, "io_uring")) {
        s->io_uring = true;
    } else {
        s->threads_aio = true;
    }
    return 0;
}

/*
 * The options that the command line and the open command share (-s -n -C
 * -r -k -t -d -i -U), with the same messages.  Returns 1 when c was one of
 * them, 0 when it was not, -1 after reporting a bad mode.
 */
static int parse_open_option(int c, const char *arg, OpenSpec *s)
{
    switch (c) {
    case 's':
        s->snapshot = true;
        break;
    case 'n':
        s->flags |= NODE_O_NOCACHE;
        s->writethrough = false;
        break;
    case 'C':
        s->copy_on_read = true;
        break;
    case 'r':
        s->read_only = true;
        break;
    case 'k':
        s->native_aio = true;
        break;
    case 't':
        if (tool_parse_cache_mode(arg, &s->flags, &s->writethrough) < 0) {
            tool_error("Invalid cache option: %s", arg);
            return -1;
        }
        break;
    case 'd':
        if (tool_parse_discard(arg, &s->unmap) < 0) {
            tool_error("Invalid discard option: %s", arg);
            return -1;
        }
        break;
    case 'i':
        if (parse_aio_into(arg, s) < 0) {
            tool_error("Invalid aio option: %s", arg);
            return -1;
        }
        break;
    case 'U':
        s->force_share = true;
        break;
    default:
        return 0;
    }
    return 1;
}

/* The driver a "proto:rest" filename names, or NULL. */
static const BlockDriver *filename_protocol(const char *filename)
{
    const char *colon = filename ? strchr(filename, ':') : NULL;
    const char *slash = filename ? strchr(filename, '/') : NULL;
    const BlockDriver *drv;
    char *proto;

    if (!colon || (slash && slash < colon)) {
        return NULL;
    }
    proto = g_strndup(filename, colon - filename);
    drv = driver_find_protocol(proto);
    g_free(proto);
    return drv && driver_protocol_name(drv) ? drv : NULL;
}

/*
 * The aio mode belongs to the file node.  qemu-io passes it as an open
 * flag that every node inherits and only file nodes read; we have to name
 * the node, so follow the graph the options describe (formats and
 * blkdebug down to their storage) to the key of the file node's "aio".
 * NULL when the storage is no file, or when it comes from a filename that
 * a filter parses itself ("blkdebug:conf:img"), where no option can reach
 * it: the mode is then left at our default, as QEMU's non-file drivers
 * ignore it too.
 */
static char *aio_option_key(json_t *opts, const char *filename)
{
    json_t *view = json_deep_copy(opts);
    GString *prefix = g_string_new("");
    const char *fname = filename;
    char *key = NULL;
    bool top = true;

    if (filename && g_str_has_prefix(filename, "json:")) {
        json_t *j = opts_parse_json(filename + 5, NULL);
        json_t *flat = j && json_is_object(j) ? opts_flatten(j) : NULL;
        const char *k;
        json_t *v;
        json_object_foreach(flat, k, v) {
            if (!json_object_get(view, k)) {
                json_object_set(view, k, v);
            }
        }
        json_decref(flat);
        json_decref(j);
        fname = NULL;
    }
    for (int depth = 0; depth < 8; depth++) {
        char *k = g_strconcat(prefix->str, "driver", NULL);
        const char *name = json_string_value(json_object_get(view, k));
        const BlockDriver *drv = name ? driver_find(name) : NULL;
        const BlockDriver *by_name = filename_protocol(fname);
        const char *child;
        g_free(k);

        k = g_strconcat(prefix->str, "filename", NULL);
        if (json_string_value(json_object_get(view, k))) {
            fname = json_string_value(json_object_get(view, k));
            by_name = filename_protocol(fname);
        }
        g_free(k);
        if (!drv && !name && !top) {
            drv = by_name ? by_name : driver_find("file");
        }
        if (!drv && !name) {
            child = "file";             /* probed: a format over storage */
        } else if (!drv) {
            break;
        } else if (driver_has(drv, DRIVER_IS_FORMAT)) {
            child = "file";
        } else if (!strcmp(driver_format_name(drv), "file") ||
                   !strcmp(driver_format_name(drv), "host_device")) {
            key = g_strconcat(prefix->str, "aio", NULL);
            break;
        } else if (!strcmp(driver_format_name(drv), "blkdebug") &&
                   drv != by_name) {
            child = "image";
        } else {
            break;
        }
        g_string_append_printf(prefix, "%s.", child);
        top = false;
    }
    g_string_free(prefix, TRUE);
    json_decref(view);
    return key;
}

static void put_aio_option(json_t *opts, const char *filename,
                           const char *mode)
{
    char *key = aio_option_key(opts, filename);

    if (key && !json_object_get(opts, key)) {
        json_object_set_new(opts, key, json_string(mode));
    }
    g_free(key);
}

/* -s: open the image read-only under a temporary qcow2 overlay. */
static BlockBackend *open_with_snapshot(const char *name, json_t *opts,
                                        int flags, GError **errp)
{
    BlockNode *base, *overlay;
    BlockBackend *blk = NULL;
    const char *tmpdir = g_getenv("TMPDIR");
    char *tmp;
    json_t *create_opts, *ov_opts;
    int64_t size;
    int fd;

    /* Read-only, so probing a raw image does not warn (as in qemu-io). */
    base = node_open(name, opts, flags & ~NODE_O_RDWR, errp);
    if (!base) {
        return NULL;
    }
    size = node_getlength(base);
    if (size < 0) {
        error_setg_errno(errp, (int)-size, "Could not get image size");
        node_unref(base);
        return NULL;
    }
    tmp = g_build_filename(tmpdir && *tmpdir ? tmpdir : "/var/tmp",
                           "vl.XXXXXX", NULL);
    fd = g_mkstemp(tmp);
    if (fd < 0) {
        error_setg_errno(errp, errno, "Could not get temporary filename");
        g_free(tmp);
        node_unref(base);
        return NULL;
    }
    close(fd);

    create_opts = json_pack("{s:I}", "size", (json_int_t)size);
    if (!image_create("qcow2", tmp, create_opts, errp)) {
        goto out;
    }
    ov_opts = json_pack("{s:s, s:{s:s, s:s}, s:s}", "driver", "qcow2",
                        "file", "driver", "file", "filename", tmp,
                        "backing", node_get_name(base));
    overlay = node_open(NULL, ov_opts, flags, errp);
    if (!overlay) {
        goto out;
    }
    blk = blk_new(BLK_PERM_CONSISTENT_READ |
                  (flags & NODE_O_RDWR ? BLK_PERM_WRITE : 0), BLK_PERM_ALL);
    if (!blk_insert_node(blk, overlay, errp)) {
        blk_unref(blk);
        blk = NULL;
    }
    node_unref(overlay);
out:
    /* The overlay lives only as long as it is open. */
    unlink(tmp);
    g_free(tmp);
    node_unref(base);
    return blk;
}

/*
 * -C: QEMU copies on read in its request path for the whole image; here a
 * copy-on-read filter without a bottom goes above the image, which copies
 * the same clusters.
 */
static bool io_cor_inserted;

BlockNode *io_image_node(BlockBackend *blk)
{
    BlockNode *bs = blk_node(blk);
    return io_cor_inserted && bs ? node_filtered_child(bs) : bs;
}

static bool insert_cor_filter(BlockBackend *blk, GError **errp)
{
    BlockNode *bs = blk_node(blk);
    json_t *o = json_pack("{s:s, s:s}", "driver", "copy-on-read",
                          "file", node_get_name(bs));
    BlockNode *cor = node_open(NULL, o, NODE_O_RDWR, errp);
    if (!cor) {
        return false;
    }
    bool ok = node_replace(bs, cor, errp);
    node_unref(cor);
    io_cor_inserted = ok;
    return ok;
}

/* Open name (or options only) as the current image; 0 or 1 on error. */
static int openfile(const char *name, const OpenSpec *spec, json_t *opts)
{
    int flags = spec->flags | (spec->read_only ? 0 : NODE_O_RDWR);
    GError *err = NULL;

    if (io_blk) {
        tool_error("file open already, try 'help close'");
        json_decref(opts);
        return 1;
    }
    if (!opts) {
        opts = json_object();
    }
    if (spec->force_share) {
        json_t *fs = json_object_get(opts, "force-share");
        if (fs && !(json_is_string(fs) &&
                    !strcmp(json_string_value(fs), "on"))) {
            tool_error("-U conflicts with image options");
            json_decref(opts);
            return 1;
        }
        json_object_set_new(opts, "force-share", json_string("on"));
    }
    if (!json_object_get(opts, "discard")) {
        json_object_set_new(opts, "discard",
                            json_string(spec->unmap ? "unmap" : "ignore"));
    }
    if (spec->native_aio || spec->io_uring) {
        put_aio_option(opts, name, spec->native_aio ? "native" : "io_uring");
    } else if (spec->threads_aio) {
        /* QEMU's default back end, but not ours: say it explicitly. */
        put_aio_option(opts, name, "threads");
    }
    opts = tool_qemuopts_nest(opts);

    if (spec->copy_on_read && spec->read_only) {
        error_setg(&err, "Can't use copy-on-read on read-only device");
        json_decref(opts);
        io_blk = NULL;
    } else if (spec->snapshot) {
        io_blk = open_with_snapshot(name, opts, flags, &err);
    } else {
        io_blk = blk_new_open(name, opts, flags, &err);
    }
    if (io_blk && spec->copy_on_read && !insert_cor_filter(io_blk, &err)) {
        blk_unref(io_blk);
        io_blk = NULL;
    }
    if (!io_blk) {
        tool_error_gerror(err, "can't open%s%s: ", name ? " device " : "",
                          name ? name : "");
        return 1;
    }
    blk_set_enable_write_cache(io_blk, !spec->writethrough);
    return 0;
}

static void close_current(void)
{
    if (io_blk) {
        blk_drain(io_blk);
        blk_unref(io_blk);
        io_blk = NULL;
        io_cor_inserted = false;
    }
}

/* ---- open, close, quit ---- */

static int close_f(BlockBackend *blk, int argc, char **argv)
{
    close_current();
    return 0;
}

const IoCmd io_cmd_close = {
    .name = "close", .altname = "c", .func = close_f,
    .oneline = "close the current open file",
};

static void open_help(void)
{
    printf(
"\n"
" opens a new file in the requested mode\n"
"\n"
" Example:\n"
" 'open -n -o driver=raw /tmp/data' - opens raw data file read-write, uncached\n"
"\n"
" Opens a file for subsequent use by all of the other qemu-io commands.\n"
" -r, -- open file read-only\n"
" -s, -- use snapshot file\n"
" -C, -- use copy-on-read\n"
" -n, -- disable host cache, short for -t none\n"
" -U, -- force shared permissions\n"
" -k, -- use kernel AIO implementation (Linux only, prefer use of -i)\n"
" -i, -- use AIO mode (threads, native or io_uring)\n"
" -t, -- use the given cache mode for the image\n"
" -d, -- use the given discard mode for the image\n"
" -o, -- options to be given to the block driver"
"\n");
}

static int open_f(BlockBackend *blk, int argc, char **argv)
{
    OpenSpec spec;
    json_t *opts = NULL;
    GError *err = NULL;
    int c, ret;

    open_spec_init(&spec);
    while ((c = getopt(argc, argv, "snCro:ki:t:d:U")) != -1) {
        switch (c) {
        case 'o':
            if (io_image_opts) {
                printf("--image-opts and 'open -o' are mutually exclusive\n");
                json_decref(opts);
                return -EINVAL;
            }
            if (!tool_qemuopts_parse(&opts, optarg, true, &err)) {
                tool_error_gerror(err, "%s", "");
                json_decref(opts);
                return -EINVAL;
            }
            break;
        default:
            ret = parse_open_option(c, optarg, &spec);
            if (ret <= 0) {
                json_decref(opts);
                return ret < 0 ? -EINVAL : io_usage_error(&io_cmd_open);
            }
        }
    }
    if (io_image_opts && optind == argc - 1) {
        if (!tool_qemuopts_parse(&opts, argv[optind], true, &err)) {
            tool_error_gerror(err, "%s", "");
            json_decref(opts);
            return -EINVAL;
        }
        optind++;
    }

    if (optind == argc - 1) {
        ret = openfile(argv[optind], &spec, opts);
    } else if (optind == argc) {
        ret = openfile(NULL, &spec, opts);
    } else {
        json_decref(opts);
        return io_usage_error(&io_cmd_open);
    }
    return ret ? -EINVAL : 0;
}

const IoCmd io_cmd_open = {
    .name = "open", .altname = "o", .func = open_f,
    .argmin = 1, .argmax = -1,
    .flags = IOCMD_NOFILE_OK,
    .args = "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
    .oneline = "open the file specified by path",
    .help = open_help,
};

static int quit_f(BlockBackend *blk, int argc, char **argv)
{
    io_quit = true;
    return 0;
}

const IoCmd io_cmd_quit = {
    .name = "quit", .altname = "q", .func = quit_f,
    .argmin = -1, .argmax = -1,
    .flags = IOCMD_GLOBAL,
    .oneline = "exit the program",
};

/* ---- Input ---- */

static char *prompt;

/*
 * Lines from a pipe or file.  We read the descriptor ourselves (no stdio
 * buffering) so that a line already received is never left waiting behind
 * a poll for more input.  Like qemu-io's fgets() with a 1024-byte buffer, a
 * longer line arrives as several commands of 1023 bytes.
 */
#define MAX_LINE 1023
static GString *inbuf;
static bool in_eof;
static bool in_ready;

static void stdin_readable(void *opaque)
{
    in_ready = true;
}

static void wait_stdin(void)
{
    guint id = loop_add_fd(STDIN_FILENO, stdin_readable, NULL);

    in_ready = false;
    while (!in_ready) {
        loop_iterate(true);
    }
    loop_remove_fd(id);
}

static char *fetch_line_plain(void)
{
    if (!inbuf) {
        inbuf = g_string_new(NULL);
    }
    for (;;) {
        const char *nl = memchr(inbuf->str, '\n', inbuf->len);
        size_t take = 0;

        if (nl && (size_t)(nl - inbuf->str) < MAX_LINE) {
            take = nl - inbuf->str + 1;
        } else if (inbuf->len >= MAX_LINE) {
            take = MAX_LINE;
        } else if (in_eof) {
            take = inbuf->len;
            if (!take) {
                return NULL;
            }
        }
        if (take) {
            char *line = g_strndup(inbuf->str, take);
            size_t len = strlen(line);

            g_string_erase(inbuf, 0, take);
            if (len && line[len - 1] == '\n') {
                line[len - 1] = '\0';
            }
            /* Let completions that are already due print first. */
            loop_iterate(false);
            return line;
        }

        char chunk[4096];
        ssize_t n;

        wait_stdin();
        n = read(STDIN_FILENO, chunk, sizeof(chunk));
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n <= 0) {
            in_eof = true;
        } else {
            g_string_append_len(inbuf, chunk, n);
        }
    }
}

#ifdef HAVE_LIBEDIT
static bool use_editline;
static bool edit_done;
static char *edit_line;

static void edit_handler(char *line)
{
    edit_done = true;
    edit_line = line ? g_strdup(line) : NULL;
    if (line && *line) {
        add_history(line);
    }
    free(line);
}

static char *complete_generator(const char *text, int state)
{
    static char **matches;
    static int idx;

    if (state == 0) {
        g_strfreev(matches);
        matches = io_complete_commands(text);
        idx = 0;
    }
    /* readline frees what we return, so hand out malloc'd copies. */
    return matches[idx] ? strdup(matches[idx++]) : NULL;
}

static char **complete_command(const char *text, int start, int end)
{
    rl_attempted_completion_over = 1;
    return start == 0 ? rl_completion_matches(text, complete_generator)
                      : NULL;
}

static void edit_readable(void *opaque)
{
    rl_callback_read_char();
}

static char *fetch_line_edit(void)
{
    guint id;

    edit_done = false;
    rl_callback_handler_install(prompt, edit_handler);
    id = loop_add_fd(STDIN_FILENO, edit_readable, NULL);
    while (!edit_done) {
        loop_iterate(true);
    }
    loop_remove_fd(id);
    rl_callback_handler_remove();
    if (!edit_line) {
        printf("\n"); /* end of input on the terminal */
    }
    return edit_line;
}
#endif

static char *fetch_line(void)
{
#ifdef HAVE_LIBEDIT
    if (use_editline) {
        return fetch_line_edit();
    }
#endif
    printf("%s", prompt);
    fflush(stdout);
    return fetch_line_plain();
}

static int command_loop(char **cmds, int ncmds)
{
    int last_error = 0;
    int ret;

    if (ncmds) {
        for (int i = 0; !io_quit && i < ncmds; i++) {
            ret = io_run_command(cmds[i]);
            if (ret < 0) {
                last_error = ret;
            }
        }
        return last_error;
    }
    while (!io_quit) {
        char *line = fetch_line();

        if (!line) {
            break;
        }
        ret = io_run_command(line);
        g_free(line);
        if (ret < 0) {
            last_error = ret;
        }
    }
    return last_error;
}

/* ---- main ---- */

static void usage(const char *name)
{
    printf(
"Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
"QEMU Disk exerciser\n"
"\n"
"  --object OBJECTDEF   define an object such as 'secret' for\n"
"                       passwords and/or encryption keys\n"
"  --image-opts         treat file as option string\n"
"  -c, --cmd STRING     execute command with its arguments\n"
"                       from the given string\n"
"  -f, --format FMT     specifies the block driver to use\n"
"  -r, --read-only      export read-only\n"
"  -s, --snapshot       use snapshot file\n"
"  -n, --nocache        disable host cache, short for -t none\n"
"  -C, --copy-on-read   enable copy-on-read\n"
"  -m, --misalign       misalign allocations for O_DIRECT\n"
"  -k, --native-aio     use kernel AIO implementation\n"
"                       (Linux only, prefer use of -i)\n"
"  -i, --aio=MODE       use AIO mode (threads, native or io_uring)\n"
"  -t, --cache=MODE     use the given cache mode for the image\n"
"  -d, --discard=MODE   use the given discard mode for the image\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                       specify tracing options\n"
"                       see qemu-img(1) man page for full description\n"
"  -U, --force-share    force shared permissions\n"
"  -h, --help           display this help and exit\n"
"  -V, --version        output version information and exit\n"
"\n"
"See '%s -c help' for information on available commands.\n"
"\n"
"See <https://qemu.org/contribute/report-a-bug> for how to report bugs.\n"
"More information on the QEMU project at <https://qemu.org>.\n",
           name, name);
}

static void print_blkdebug_notice(const char *line)
{
    printf("%s\n", line);
}

enum {
    OPTION_OBJECT = 256,
    OPTION_IMAGE_OPTS = 257,
};

int main(int argc, char **argv)
{
    static const struct option lopt[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "cmd", required_argument, NULL, 'c' },
        { "format", required_argument, NULL, 'f' },
        { "read-only", no_argument, NULL, 'r' },
        { "snapshot", no_argument, NULL, 's' },
        { "nocache", no_argument, NULL, 'n' },
        { "copy-on-read", no_argument, NULL, 'C' },
        { "misalign", no_argument, NULL, 'm' },
        { "native-aio", no_argument, NULL, 'k' },
        { "aio", required_argument, NULL, 'i' },
        { "discard", required_argument, NULL, 'd' },
        { "cache", required_argument, NULL, 't' },
        { "trace", required_argument, NULL, 'T' },
        { "object", required_argument, NULL, OPTION_OBJECT },
        { "image-opts", no_argument, NULL, OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    const char *sopt = "hVc:d:f:rsnCmki:t:T:U";
    GPtrArray *cmds = g_ptr_array_new();
    const char *format = NULL;
    OpenSpec spec;
    int c, ret;

    /*
     * A closed standard descriptor would be reused by the image file, and
     * then image data would be read as commands or overwritten by output.
     */
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) == -1 && open("/dev/null", O_RDWR) != fd) {
            return 1;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    /* a write past RLIMIT_FSIZE fails with EFBIG instead of killing us */
    signal(SIGXFSZ, SIG_IGN);
    tool_set_name(argv[0]);
    open_spec_init(&spec);

    while ((c = getopt_long(argc, argv, sopt, lopt, NULL)) != -1) {
        switch (c) {
        case 'f':
            format = optarg;
            break;
        case 'c':
            g_ptr_array_add(cmds, optarg);
            break;
        case 'm':
            io_misalign = true;
            break;
        case 'T':
            tool_trace_option(optarg);
            break;
        case 'V':
            printf("%s version %s\n", tool_name(), STRATA_VERSION);
            printf("A qemu-io 7.2 compatible disk exerciser of the strata "
                   "project\n");
            exit(0);
        case 'h':
            usage(tool_name());
            exit(0);
        case OPTION_OBJECT:
            tool_object_process_cmdline(optarg);
            break;
        case OPTION_IMAGE_OPTS:
            io_image_opts = true;
            break;
        default:
            ret = parse_open_option(c, optarg, &spec);
            if (ret < 0) {
                exit(1);
            } else if (ret == 0) {
                usage(tool_name());
                exit(1);
            }
        }
    }

    if (argc - optind > 1) {
        usage(tool_name());
        exit(1);
    }
    if (format && io_image_opts) {
        tool_error("--image-opts and -f are mutually exclusive");
        exit(1);
    }
    tool_trace_init_file();

    blkdbg_set_notice_func(print_blkdebug_notice);
    prompt = g_strdup_printf("%s> ", tool_name());
#ifdef HAVE_LIBEDIT
    if (isatty(STDIN_FILENO) && cmds->len == 0) {
        use_editline = true;
        rl_readline_name = tool_name();
        rl_attempted_completion_function = complete_command;
    }
#endif

    if (argc - optind == 1) {
        json_t *opts = NULL;

        if (io_image_opts) {
            GError *err = NULL;
            if (!tool_qemuopts_parse(&opts, argv[optind], false, &err)) {
                tool_error_gerror(err, "%s", "");
                json_decref(opts);
                exit(1);
            }
            if (openfile(NULL, &spec, opts)) {
                exit(1);
            }
        } else {
            if (format) {
                opts = json_pack("{s:s}", "driver", format);
            }
            if (openfile(argv[optind], &spec, opts)) {
                exit(1);
            }
        }
    }

    ret = command_loop((char **)cmds->pdata, (int)cmds->len);

    /* Requests still in flight complete (and print) before we exit. */
    close_current();
    g_ptr_array_free(cmds, true);
    tool_objects_cleanup();
    g_free(prompt);
    return ret < 0 ? 1 : 0;
}
