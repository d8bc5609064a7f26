/*
 * strata-img: shared declarations of the subcommands.
 *
 * Each subcommand lives in its own file (create.c, info.c, bench.c, ...)
 * and exports one `int img_<name>(int argc, char **argv)` that main.c puts
 * in its dispatch table.  argv[0] is the subcommand name, options start at
 * argv[1]; the function returns the process exit code, or exits itself for
 * usage errors exactly where qemu-img 7.2 does.
 *
 * The helpers below reproduce qemu-img's command-line conventions: its
 * getopt error messages, its size parser messages, how it opens an image
 * from -f / -t / -i / -U / --image-opts, and its JSON layout.
 */
#ifndef STRATA_IMG_H
#define STRATA_IMG_H

#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <glib.h>
#include <jansson.h>
#include "strata/backend.h"
#include "strata/json-out.h"
#include "../common/tool-common.h"
#include "../common/create-opts.h"

/* ---- Subcommands (one file each) ---- */

int img_amend(int argc, char **argv);
int img_bench(int argc, char **argv);
int img_bitmap(int argc, char **argv);
int img_check(int argc, char **argv);
int img_commit(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_create(int argc, char **argv);
int img_dd(int argc, char **argv);
int img_info(int argc, char **argv);
int img_map(int argc, char **argv);
int img_measure(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_snapshot(int argc, char **argv);
/* qemu's bdrv_snapshot_dump(): the table header, or one row (no newline). */
struct NodeSnapshot;
void img_snapshot_dump_header(void);
void img_snapshot_dump(const struct NodeSnapshot *sn);

/* ---- main.c ---- */

/* Full help text (what `strata-img --help` prints); exits 0. */
G_NORETURN void img_help(void);

/* ---- img-common.c: command line ---- */

/* "NAME: msg" then "Try 'NAME --help' for more information"; exit 1. */
G_NORETURN void img_error_exit(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/*
 * getopt_long() with qemu-img's error handling: `shortopts` must start with
 * ':' (missing arguments are reported by us).  Unknown options and missing
 * arguments end the program with qemu-img's messages; 'h' prints the help.
 * Returns the option character, or -1 at the end.
 */
int img_getopt(int argc, char **argv, const char *shortopts,
               const struct option *longopts);

/*
 * qemu-img's cvtnum_full(): a size with suffixes, between min and max.
 * Prints qemu-img's two messages (invalid / out of range) naming `name`
 * and returns a negative errno on error.
 */
int64_t img_cvtnum_full(const char *name, const char *value, int64_t min,
                        int64_t max);
int64_t img_cvtnum(const char *name, const char *value);

/* qemu_strtoi(value, NULL, 0, &out): the whole string, an int. */
bool img_strtoi(const char *value, int *out);

/*
 * --output=human|json (NULL: human) into *json; anything else gets
 * qemu-img's message and false.
 */
bool img_output_format(const char *output, bool *json);

/* ---- img-common.c: opening images ---- */

typedef struct ImgOpenSpec {
    bool image_opts;      /* filename is an option string */
    const char *fmt;      /* -f, may be NULL (probe) */
    int flags;            /* NODE_O_* (RDWR, NOCACHE, NO_FLUSH) */
    bool writethrough;    /* from -t */
    bool force_share;     /* -U */
    const char *aio;      /* -i / -n: "threads", "native", "io_uring", NULL */
} ImgOpenSpec;

/*
 * Long-option codes of the options that open an image, shared so that
 * img_open_option() can handle them; a subcommand numbers its own options
 * from IMG_OPTION_FIRST_PRIVATE.
 */
enum {
    IMG_OPTION_OBJECT = 256,
    IMG_OPTION_IMAGE_OPTS,
    IMG_OPTION_PROGRESS,         /* --progress=json|human (progress.c) */
    IMG_OPTION_FIRST_PRIVATE,
};

/*
 * For the default branch of a subcommand's option switch: -f, -U,
 * --image-opts and --object mean the same wherever an image is opened.
 * Other codes are ignored: img_getopt() has already refused unknown ones.
 */
void img_open_option(int c, const char *arg, ImgOpenSpec *spec);

/*
 * Open filename as qemu-img's img_open() does; on error print
 * "Could not open 'X': reason" and return NULL.
 */
BlockBackend *img_open(const char *filename, const ImgOpenSpec *spec);

/* The protocol driver a "proto:..." prefix names, else "file". */
const BlockDriver *img_find_protocol(const char *filename, GError **errp);
/* Same, printing "Unknown protocol 'x'" itself. */
const BlockDriver *img_find_protocol_or_report(const char *filename);

/* ---- snapshot-param.c: -l of convert and measure ---- */

/* Parse "snapshot.id=..,snapshot.name=.." into *sn_opts (printing errors). */
bool img_parse_snapshot_opts(json_t **sn_opts, const char *arg);
/* Load the snapshot named by name (ID, else name) or sn_opts; prints. */
bool img_load_snapshot(BlockBackend *blk, const char *name, json_t *sn_opts);

/* ---- progress.c: qemu-img's progress meter ---- */

typedef struct ImgProgress {
    bool enabled;
    float current;
    float last_print;
    float min_skip;
    /* --progress=json: one JSON object per line instead of the meter */
    const char *json_op;         /* NULL: qemu-img's meter */
    uint64_t done, total;        /* bytes, what the JSON lines report */
    unsigned json_lines;         /* printed so far; the last one's values: */
    uint64_t json_done;
    double json_pct;
} ImgProgress;

/*
 * --progress=ARG of a long subcommand: "human" is -p, "json" prints one
 * JSON object per line on stdout ({"operation", "done", "total",
 * "percent"}, done and total in bytes), a strata extension (docs/status.md, "Commit").
 * False, with the error printed, for anything else.
 */
bool img_progress_parse(const char *arg, bool *progress, bool *json);
/* json: report as JSON lines for operation op ("commit", ...). */
void img_progress_init_mode(ImgProgress *p, bool enabled, bool json,
                            const char *op, float min_skip);
void img_progress_init(ImgProgress *p, bool enabled, float min_skip);
/* delta: percent of `max` percent of the job (floats, as qemu-img has). */
void img_progress_print(ImgProgress *p, float delta, int max);
/* Bytes done out of total, for the JSON lines (before a print call). */
void img_progress_set_bytes(ImgProgress *p, uint64_t done, uint64_t total);
void img_progress_end(ImgProgress *p);

/* ---- create-opts.c: checks and help on -o lists ---- */

/* qemu-img's "-o help" of create and convert: the format's options, with
 * the protocol's when a file name is given; exit status. */
int img_print_create_help(const char *filename, const char *fmt);
/* True if the list holds a bare "help" or "?" element. */
bool img_has_help_option(const char *params);
/*
 * One more -o argument: checked as qemu-img checks it ("Invalid option
 * list: ..." printed on failure), then appended to *options with a comma.
 */
bool img_append_option_list(char **options, const char *arg);
/* qemu-img's check on one -o argument (no empty list, no lone comma). */
bool img_is_valid_option_list(const char *params);

#endif
