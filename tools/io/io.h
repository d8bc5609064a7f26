/*
 * strata-io: a qemu-io compatible command interpreter over BlockBackend.
 *
 * main.c owns the program: options, the open image, the input loop and the
 * open/close/quit commands.  cmds.c holds the command table, dispatch,
 * help and the non-data commands; cmds-rw.c the read/write family;
 * io-util.c the number, report and buffer helpers they share.
 *
 * Output rules (they are what makes the text match qemu-io's): results and
 * most per-command errors go to stdout with printf, framework errors to
 * stderr without prefix, and "reported" errors to stderr with the
 * "strata-io: " prefix, exactly where qemu-io 7.2 puts each of them.
 */
#ifndef STRATA_IO_H
#define STRATA_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>
#include "strata/backend.h"

enum {
    IOCMD_NOFILE_OK = 0x01, /* runs without an open image */
    IOCMD_GLOBAL = 0x02,    /* ignores the open image entirely */
};

typedef struct IoCmd {
    const char *name;
    const char *altname;
    /* Returns 0 or a negative errno; argv[0] is the command as typed. */
    int (*func)(BlockBackend *blk, int argc, char **argv);
    int argmin, argmax;       /* -1: unlimited */
    int flags;
    uint64_t perm;            /* permissions the command needs on blk */
    const char *args;         /* NULL prints nothing, "" prints a space */
    const char *oneline;
    void (*help)(void);
} IoCmd;

/* ---- main.c ---- */
extern BlockBackend *io_blk;
extern bool io_quit;
extern bool io_image_opts;
/* The image node: below the copy-on-read filter that -C puts on top. */
BlockNode *io_image_node(BlockBackend *blk);
extern const IoCmd io_cmd_open, io_cmd_close, io_cmd_quit;

/* ---- cmds.c ---- */
/* Run one command line; <0 when it failed. */
int io_run_command(const char *line);
/* "name args -- oneline" on stdout. */
void io_command_usage(const IoCmd *ct);
/* The same, for a command called wrongly: returns -EINVAL to pass on. */
int io_usage_error(const IoCmd *ct);
/* Names of commands starting with prefix, for completion (NULL-ended). */
char **io_complete_commands(const char *prefix);

/* ---- io-util.c: helpers shared by the commands ---- */
extern bool io_misalign;   /* -m: buffers deliberately misaligned */
void io_print_cvtnum_err(int64_t rc, const char *arg);
/* tool_cvtnum() that prints qemu-io's parse error; negative on error. */
int64_t io_cvtnum(const char *arg);
void io_cvtstr(double value, char *str, size_t size);
/* The statistics of one request that ran from start to end (-C: CSV). */
void io_print_report(const char *op, struct timespec start,
                     struct timespec end, int64_t offset, int64_t count,
                     bool Cflag);
void *io_alloc(BlockBackend *blk, size_t len, int pattern);
void io_free(void *p);
void io_dump_buffer(const void *buffer, int64_t offset, int64_t len);
int io_parse_pattern(const char *arg);

/* ---- cmds-rw.c ---- */
extern const IoCmd io_cmd_read, io_cmd_readv, io_cmd_write, io_cmd_writev,
    io_cmd_aio_read, io_cmd_aio_write, io_cmd_aio_flush, io_cmd_discard;

#endif
