/*
 * What the cmocka unit tests share (tests/support.c, a static library
 * linked into each of them): a temporary folder per cmocka group, files
 * in it, nodes opened from JSON, a BlockBackend that holds a node with
 * the permissions a test asks for, qcow2 images and byte patterns
 * written and checked through a BlockBackend.
 *
 * Every helper fails the running test (fail_msg, cmocka's assertions)
 * instead of returning an error: they are called from test bodies only,
 * never from a coroutine (cmocka cannot unwind one).
 *
 * The folder's names carry a test_ prefix: a test's own locals are often
 * called tmpdir or path.  The rest keep the short names the tests used.
 */
#ifndef TESTS_SUPPORT_H
#define TESTS_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>

#include "strata/backend.h"

/* ---- A temporary folder for a cmocka group ---- */

/* The group's folder (NULL outside setup .. teardown). */
extern char *test_tmpdir;

/*
 * cmocka group setup/teardown (or called from a group's own): a new
 * folder, named after the program; teardown removes it with everything
 * in it (folders too) and fails if it cannot.
 */
int test_tmpdir_setup(void **state);
int test_tmpdir_teardown(void **state);

/*
 * Make the folder the current directory until teardown, which goes back:
 * for tests whose image names are stored relative (backing files, data
 * files) and for qemu-img run from there.
 */
void test_tmpdir_enter(void);

/* name in the folder (g_free it). */
char *test_path(const char *name);

/* ---- Files ---- */

/* A file of len bytes holding data (NULL: a hole of that size). */
char *make_file(const char *name, const uint8_t *data, size_t len);

/* A file of len bytes, each of them byte. */
char *make_filled(const char *name, uint8_t byte, size_t len);

/* The whole file, which must be len bytes long (g_free it). */
uint8_t *read_file(const char *path, size_t len);

/* The file at path holds exactly the len bytes of data. */
void expect_file(const char *path, const uint8_t *data, size_t len);

/* Non-zero bytes everywhere (a zero could pass for a hole), per seed. */
void fill_nonzero(uint8_t *buf, size_t len, uint32_t seed);

/* ---- Nodes and the backends that hold them ---- */

/* node_open(NULL, o, read-write); takes o's reference. */
BlockNode *open_json(json_t *o);
BlockNode *open_file(const char *path);
/* null-co of size bytes whose requests each wait latency ns. */
BlockNode *open_null(int64_t size, int64_t latency);
/* blkdebug over a file: EIO once for the first iotype request at offset. */
BlockNode *open_blkdebug(const char *path, const char *iotype,
                         int64_t offset);

/* A backend taking perm (sharing everything) on bs. */
BlockBackend *backend_on(BlockNode *bs, uint64_t perm);
/* The same, as an edge: the child the backend's root is (*blk owns it). */
BlockChild *edge(BlockBackend **blk, BlockNode *bs, uint64_t perm);

/* ---- qcow2 images and patterns ---- */

/* A qcow2 image of size bytes in the folder over backing (NULL: none). */
char *make_qcow2(const char *name, int64_t size, const char *backing);

/* The qcow2 image at path, read-write, with its backing chain. */
BlockBackend *open_blk(const char *path);
/* A backend on the graph options describe, read-write. */
BlockBackend *open_blk_json(json_t *options);

/* Write [off, off + len) full of byte / check it reads so. */
void write_pattern(BlockBackend *blk, int64_t off, int64_t len, int byte);
void check_pattern(BlockBackend *blk, int64_t off, int64_t len, int byte);

/* ---- Programs ---- */

/* Run argv (on PATH), its standard output (g_free it), status in *status. */
char *run_capture(const char *const *argv, int *status);

/* Runs the main loop's ready work: 20 non-blocking iterations. */
void run_ready(void);

/* Iterates the main loop for at most ms milliseconds or until *flag;
 * returns *flag. */
bool wait_flag(const bool *flag, int ms);

#endif
