/*
 * strata-img: a qemu-img 7.2 compatible image tool.
 *
 * main() parses the standard options (-h, -V, -T) and dispatches to one
 * subcommand from the table below; each subcommand is its own file.  To add
 * one: write tools/img/<name>.c with `int img_<name>(int, char **)`, add its
 * row here (the syntax line printed by --help) and, if qemu-img's help has a
 * "Parameters to <name> subcommand" block, its text in `params`.
 *
 * All text is qemu-img's, with our program name where qemu-img prints its
 * own, so that outputs compare equal once the program name is filtered.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "img.h"

#ifndef STRATA_VERSION
#define STRATA_VERSION "0.1.0"
#endif

typedef struct ImgCommand {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *syntax;  /* after the name, in "Command syntax:" */
    const char *params;  /* "Parameters to NAME subcommand" block, or NULL */
} ImgCommand;

/* In qemu-img's order (it is the order of its help, not alphabetical). */
static const ImgCommand commands[] = {
    { "amend", img_amend,
      "[--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] "
      "[--force] -o options filename",
      NULL },
    { "bench", img_bench,
      "[-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] "
      "[-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] "
      "[-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename",
      NULL },
    { "bitmap", img_bitmap,
      "(--merge SOURCE | --add | --remove | --clear | --enable | "
      "--disable)... [-b source_file [-F source_fmt]] [-g granularity] "
      "[--object objectdef] [--image-opts | -f fmt] filename bitmap",
      "  'bitmap' is the name of the bitmap to manipulate, through one or "
      "more\n"
      "       actions from '--add', '--remove', '--clear', '--enable', "
      "'--disable',\n"
      "       or '--merge source'\n"
      "  '-g granularity' sets the granularity for '--add' actions\n"
      "  '-b source' and '-F src_fmt' tell '--merge' actions to find the "
      "source\n"
      "       bitmaps from an alternative file\n" },
    { "check", img_check,
      "[--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] "
      "[-r [leaks | all]] [-T src_cache] [-U] filename",
      "  '-r' tries to repair any inconsistencies that are found during the "
      "check.\n"
      "       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes "
      "all\n"
      "       kinds of errors, with a higher risk of choosing the wrong fix "
      "or\n"
      "       hiding corruption that has already occurred.\n" },
    { "commit", img_commit,
      "[--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] "
      "[-b base] [-r rate_limit] [-d] [-p] filename",
      NULL },
    { "compare", img_compare,
      "[--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] "
      "[-p] [-q] [-s] [-U] filename1 filename2",
      "  '-f' first image format\n"
      "  '-F' second image format\n"
      "  '-s' run in Strict mode - fail on different image size or sector "
      "allocation\n" },
    { "convert", img_convert,
      "[--object objectdef] [--image-opts] [--target-image-opts] "
      "[--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] "
      "[-f fmt] [-t cache] [-T src_cache] [-O output_fmt] "
      "[-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] "
      "[-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] "
      "[--salvage] filename [filename2 [...]] output_filename",
      "  '--bitmaps' copies all top-level persistent bitmaps to "
      "destination\n"
      "  '-m' specifies how many coroutines work in parallel during the "
      "convert\n"
      "       process (defaults to 8)\n"
      "  '-W' allow to write to the target out of order rather than "
      "sequential\n" },
    { "create", img_create,
      "[--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] "
      "[-u] [-o options] filename [size]",
      NULL },
    { "dd", img_dd,
      "[--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] "
      "[count=blocks] [skip=blocks] if=input of=output",
      "  'bs=BYTES' read and write up to BYTES bytes at a time (default: "
      "512)\n"
      "  'count=N' copy only N input blocks\n"
      "  'if=FILE' read from FILE\n"
      "  'of=FILE' write to FILE\n"
      "  'skip=N' skip N bs-sized blocks at the start of input\n" },
    { "info", img_info,
      "[--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] "
      "[--backing-chain] [-U] filename",
      NULL },
    { "map", img_map,
      "[--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] "
      "[--max-length=len] [--output=ofmt] [-U] filename",
      NULL },
    { "measure", img_measure,
      "[--output=ofmt] [-O output_fmt] [-o options] [--size N | "
      "[--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] "
      "filename]",
      NULL },
    { "snapshot", img_snapshot,
      "[--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | "
      "-c snapshot | -d snapshot] filename",
      "  'snapshot' is the name of the snapshot to create, apply or delete\n"
      "  '-a' applies a snapshot (revert disk to saved state)\n"
      "  '-c' creates a snapshot\n"
      "  '-d' deletes a snapshot\n"
      "  '-l' lists all snapshots in the given image\n" },
    { "rebase", img_rebase,
      "[--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] "
      "[-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename",
      NULL },
    { "resize", img_resize,
      "[--object objectdef] [--image-opts] [-f fmt] "
      "[--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size",
      NULL },
};

/* qemu-img prints the per-subcommand parameter blocks in this order. */
static const char *const params_order[] = {
    "bitmap", "check", "convert", "snapshot", "compare", "dd",
};

static void print_version(void)
{
    printf("%s version %s\n", tool_name(), STRATA_VERSION);
    printf("A qemu-img 7.2 compatible disk image utility of the strata "
           "project\n");
}

static int strcmp_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

G_NORETURN void img_help(void)
{
    const char *name = tool_name();
    const char **drivers;
    size_t n = 0;

    print_version();
    printf("usage: %s [standard options] command [command options]\n"
           "QEMU disk image utility\n"
           "\n"
           "    '-h', '--help'       display this help and exit\n"
           "    '-V', '--version'    output version information and exit\n"
           "    '-T', '--trace'      [[enable=]<pattern>][,events=<file>]"
           "[,file=<file>]\n"
           "                         specify tracing options\n"
           "\n"
           "Command syntax:\n", name);
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        printf("  %s %s\n", commands[i].name, commands[i].syntax);
    }
    printf("\n"
"Command parameters:\n"
"  'filename' is a disk image filename\n"
"  'objectdef' is a QEMU user creatable object definition. See the qemu(1)\n"
"    manual page for a description of the object properties. The most common\n"
"    object type is a 'secret', which is used to supply passwords and/or\n"
"    encryption keys.\n"
"  'fmt' is the disk image format. It is guessed automatically in most cases\n"
"  'cache' is the cache mode used to write the output disk image, the valid\n"
"    options are: 'none', 'writeback' (default, except for convert), "
"'writethrough',\n"
"    'directsync' and 'unsafe' (default for convert)\n"
"  'src_cache' is the cache mode used to read input disk images, the valid\n"
"    options are the same as for the 'cache' option\n"
"  'size' is the disk image size in bytes. Optional suffixes\n"
"    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' (gigabyte, "
"1024M),\n"
"    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, 1024P)  "
"are\n"
"    supported. 'b' is ignored.\n"
"  'output_filename' is the destination disk image filename\n"
"  'output_fmt' is the destination format\n"
"  'options' is a comma separated list of format specific options in a\n"
"    name=value format. Use -o help for an overview of the options supported "
"by\n"
"    the used format\n"
"  'snapshot_param' is param used for internal snapshot, format\n"
"    is 'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
"    '[ID_OR_NAME]'\n"
"  '-c' indicates that target image must be compressed (qcow format only)\n"
"  '-u' allows unsafe backing chains. For rebasing, it is assumed that old "
"and\n"
"       new backing file match exactly. The image doesn't need a working\n"
"       backing file before rebasing in this case (useful for renaming the\n"
"       backing file). For image creation, allow creating without attempting\n"
"       to open the backing file.\n"
"  '-h' with or without a command shows this help and lists the supported "
"formats\n"
"  '-p' show progress of command (only certain commands)\n"
"  '-q' use Quiet mode - do not print any output (except errors)\n"
"  '-S' indicates the consecutive number of bytes (defaults to 4k) that must\n"
"       contain only zeros for qemu-img to create a sparse image during\n"
"       conversion. If the number of bytes is 0, the source will not be "
"scanned for\n"
"       unallocated or zero sectors, and the destination image will always "
"be\n"
"       fully allocated\n"
"  '--output' takes the format in which the output must be done (human or "
"json)\n"
"  '-n' skips the target volume creation (useful if the volume is created\n"
"       prior to running %s)\n", name);
    for (size_t i = 0; i < G_N_ELEMENTS(params_order); i++) {
        for (size_t j = 0; j < G_N_ELEMENTS(commands); j++) {
            if (!strcmp(commands[j].name, params_order[i]) &&
                commands[j].params) {
                printf("\nParameters to %s subcommand:\n%s",
                       commands[j].name, commands[j].params);
            }
        }
    }

    drivers = driver_list();
    while (drivers[n]) {
        n++;
    }
    qsort(drivers, n, sizeof(*drivers), strcmp_ptr);
    printf("\nSupported formats:");
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || strcmp(drivers[i], drivers[i - 1])) {
            printf(" %s", drivers[i]);
        }
    }
    g_free(drivers);
    printf("\n\n"
           "See <https://qemu.org/contribute/report-a-bug> for how to report "
           "bugs.\n"
           "More information on the QEMU project at <https://qemu.org>.\n");
    exit(EXIT_SUCCESS);
}

int main(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { "trace", required_argument, NULL, 'T' },
        { NULL, 0, NULL, 0 },
    };
    const char *cmdname;
    int c;

    /* a write past RLIMIT_FSIZE fails with EFBIG instead of killing us */
    signal(SIGXFSZ, SIG_IGN);
    tool_set_name(argv[0]);
    if (argc < 2) {
        img_error_exit("Not enough arguments");
    }

    /* '+': stop at the subcommand name, its options are its own. */
    while ((c = img_getopt(argc, argv, "+:hVT:", long_options)) != -1) {
        switch (c) {
        case 'V':
            print_version();
            return EXIT_SUCCESS;
        case 'T':
            tool_trace_option(optarg);
            break;
        }
    }

    cmdname = argv[optind];
    if (!cmdname) {
        /* Only standard options ("-T foo"): nothing to do, as qemu-img. */
        return EXIT_SUCCESS;
    }
    tool_trace_init_file();
    /* The subcommand sees its own name as argv[0]; getopt starts afresh. */
    argc -= optind;
    argv += optind;
    optind = 0;

    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (!strcmp(cmdname, commands[i].name)) {
            int ret = commands[i].run(argc, argv);
            tool_objects_cleanup();
            return ret;
        }
    }
    img_error_exit("Command not found: %s", cmdname);
}
