/*
 * Memory backends through the generated command table: what a wire reply
 * cannot show (the iotest mem-backend-qmp checks those against QEMU).  The
 * RAM block a backend registers is the memory itself (shared with whoever
 * else maps the file), object-del is refused while a migration holds the
 * block, a readonly file gives a readonly block, and the dirty log named by
 * x-strata-dirty-log is what the tracking API reads.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "strata/qmp.h"
#include "strata/ram-block.h"
#include "support.h"

static char *run(const char *name, const char *args_json)
{
    const QmpCommand *cmd = qmp_command_find(name);
    json_t *args = json_loads(args_json, 0, NULL);
    json_t *ret = NULL;
    GError *err = NULL;
    char *msg = NULL;

    assert_non_null(cmd);
    assert_non_null(args);
    if (!cmd->fn(args, &ret, &err)) {
        msg = g_strdup(err->message);
        g_error_free(err);
    }
    json_decref(ret);
    json_decref(args);
    return msg;
}

static void test_block_is_the_memory(void **state)
{
    g_autofree char *path = test_path("ram");
    g_autofree char *args = g_strdup_printf(
        "{\"qom-type\": \"memory-backend-file\", \"id\": \"f0\", "
        "\"size\": 1048576, \"mem-path\": \"%s\", \"share\": true}", path);

    assert_null(run("object-add", args));
    RamBlock *rb = ram_block_find("f0");
    assert_non_null(rb);
    assert_int_equal(rb->size, 1 << 20);
    assert_int_equal(rb->page_size, sysconf(_SC_PAGESIZE));
    assert_false(rb->readonly);
    assert_true(rb->fd >= 0);

    /* another process's view of the file: its writes are the block's */
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, "guest", 5, 8192), 5);
    assert_memory_equal(rb->host + 8192, "guest", 5);
    memcpy(rb->host + 65536, "daemon", 6);
    char buf[6];
    assert_int_equal(pread(fd, buf, 6, 65536), 6);
    assert_memory_equal(buf, "daemon", 6);
    close(fd);

    /* a migration holds the block: object-del waits for it */
    ram_block_ref(rb);
    char *msg = run("object-del", "{\"id\": \"f0\"}");
    assert_string_equal(msg, "object 'f0' is in use, can not be deleted: "
                        "a save or load uses its RAM block 'f0'");
    g_free(msg);
    assert_ptr_equal(ram_block_find("f0"), rb);
    ram_block_unref(rb);
    assert_null(run("object-del", "{\"id\": \"f0\"}"));
    assert_null(ram_block_find("f0"));
}

static void test_private_and_readonly(void **state)
{
    g_autofree char *path = test_path("ro");
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 65536), 0);
    assert_int_equal(pwrite(fd, "before", 6, 0), 6);

    g_autofree char *ro = g_strdup_printf(
        "{\"qom-type\": \"memory-backend-file\", \"id\": \"r0\", "
        "\"size\": 65536, \"mem-path\": \"%s\", \"readonly\": true, "
        "\"share\": true}", path);
    assert_null(run("object-add", ro));
    RamBlock *rb = ram_block_find("r0");
    assert_true(rb->readonly);
    assert_memory_equal(rb->host, "before", 6);

    /* share=off (a file's default): the daemon's copy is its own */
    g_autofree char *priv = g_strdup_printf(
        "{\"qom-type\": \"memory-backend-file\", \"id\": \"p0\", "
        "\"size\": 65536, \"mem-path\": \"%s\"}", path);
    assert_null(run("object-add", priv));
    RamBlock *pb = ram_block_find("p0");
    assert_int_equal(pb->fd, -1);
    memcpy(pb->host, "private", 7);
    char buf[7];
    assert_int_equal(pread(fd, buf, 7, 0), 7);
    assert_memory_equal(buf, "before", 6);
    close(fd);

    /* the RAM block ids of QEMU's x-use-canonical-path-for-ramblock-id */
    assert_null(run("object-add", "{\"qom-type\": \"memory-backend-memfd\", "
                    "\"id\": \"c0\", \"size\": 4096, "
                    "\"x-use-canonical-path-for-ramblock-id\": true}"));
    assert_null(ram_block_find("c0"));
    assert_non_null(ram_block_find("/objects/c0"));

    assert_null(run("object-del", "{\"id\": \"r0\"}"));
    assert_null(run("object-del", "{\"id\": \"p0\"}"));
    assert_null(run("object-del", "{\"id\": \"c0\"}"));
    assert_int_equal(ram_block_count(), 0);
}

static void test_dirty_log(void **state)
{
    g_autofree char *log_path = test_path("dirty");
    const uint64_t pages = 256;    /* 1 MiB of 4 KiB pages: 4 words */
    int fd = open(log_path, O_RDWR | O_CREAT, 0644);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 16), 0);

    /* too small for the block: the backend is not created */
    g_autofree char *args = g_strdup_printf(
        "{\"qom-type\": \"memory-backend-memfd\", \"id\": \"m0\", "
        "\"size\": 1048576, \"x-strata-dirty-log\": \"%s\"}", log_path);
    char *msg = run("object-add", args);
    assert_string_equal(msg, "dirty log of RAM block 'm0' is 16 bytes, it "
                        "needs 32 (one bit per 4096 byte page, in 64-bit "
                        "words)");
    g_free(msg);
    assert_null(ram_block_find("m0"));

    assert_int_equal(ftruncate(fd, 32), 0);
    assert_null(run("object-add", args));
    RamBlock *rb = ram_block_find("m0");
    assert_non_null(rb);
    assert_int_equal(ram_block_pages(rb), pages);
    assert_true(ram_block_has_dirty_log(rb));

    /* the monitor's side: its own mapping of the log */
    uint64_t *log = mmap(NULL, 32, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                         0);
    assert_true(log != MAP_FAILED);
    GError *err = NULL;
    unsigned long bm[256 / (8 * sizeof(unsigned long))] = { 0 };
    assert_true(ram_block_log_start(rb, &err));
    log[0] |= 1ULL << 3;
    log[3] |= 1ULL << 63;
    assert_int_equal(ram_block_log_sync(rb, bm, &err), 2);
    assert_true(bm[0] & (1UL << 3));
    assert_true(bm[255 / (8 * sizeof(unsigned long))] &
                (1UL << (255 % (8 * sizeof(unsigned long)))));
    assert_int_equal(log[0], 0);
    assert_int_equal(log[3], 0);

    /* object-del while tracking (not busy): the log goes with it */
    assert_null(run("object-del", "{\"id\": \"m0\"}"));
    assert_null(ram_block_find("m0"));
    munmap(log, 32);
    close(fd);

    msg = run("object-add", "{\"qom-type\": \"memory-backend-memfd\", "
              "\"id\": \"m1\", \"size\": 4096, "
              "\"x-strata-dirty-log\": \"/nonexistent/log\"}");
    assert_string_equal(msg, "can't open dirty log /nonexistent/log: No "
                        "such file or directory");
    g_free(msg);
    assert_int_equal(ram_block_count(), 0);
}

static void test_dirty_reported_over_qmp(void **state)
{
    char *msg = run("object-add", "{\"qom-type\": \"memory-backend-memfd\", "
                    "\"id\": \"q0\", \"size\": 65536, "
                    "\"x-strata-dirty-qmp\": true, "
                    "\"x-strata-dirty-log\": \"/tmp/x\"}");
    assert_string_equal(msg, "x-strata-dirty-log and x-strata-dirty-qmp "
                        "cannot both be set: the dirty log is either shared "
                        "or kept by the daemon");
    g_free(msg);
    assert_null(run("object-add", "{\"qom-type\": \"memory-backend-memfd\", "
                    "\"id\": \"q0\", \"size\": 65536, "
                    "\"x-strata-dirty-qmp\": true}"));
    assert_null(run("object-add", "{\"qom-type\": \"memory-backend-memfd\", "
                    "\"id\": \"n0\", \"size\": 65536}"));
    RamBlock *rb = ram_block_find("q0");
    GError *err = NULL;
    unsigned long bm[1] = { 0 };
    assert_true(ram_block_log_start(rb, &err));

    assert_null(run("x-strata-memdev-dirty", "{\"id\": \"q0\", \"ranges\": "
                    "[{\"offset\": 4096, \"length\": 8192}, "
                    "{\"offset\": 65535, \"length\": 1}]}"));
    /* all or nothing: a bad range marks none of the others */
    msg = run("x-strata-memdev-dirty", "{\"id\": \"q0\", \"ranges\": "
              "[{\"offset\": 0, \"length\": 1}, "
              "{\"offset\": 65536, \"length\": 1}]}");
    assert_string_equal(msg, "Range 0x10000+0x1 is beyond the end of memory "
                        "backend 'q0' (0x10000 bytes)");
    g_free(msg);
    assert_int_equal(ram_block_log_sync(rb, bm, &err), 3);
    assert_int_equal(bm[0], (1UL << 1) | (1UL << 2) | (1UL << 15));

    msg = run("x-strata-memdev-dirty", "{\"id\": \"n0\", \"ranges\": []}");
    assert_string_equal(msg, "Memory backend 'n0' has no dirty log (create "
                        "it with x-strata-dirty-qmp or x-strata-dirty-log)");
    g_free(msg);
    msg = run("x-strata-memdev-dirty", "{\"id\": \"nosuch\", "
              "\"ranges\": []}");
    assert_string_equal(msg, "Memory backend 'nosuch' not found");
    g_free(msg);
    assert_null(run("object-del", "{\"id\": \"q0\"}"));
    assert_null(run("object-del", "{\"id\": \"n0\"}"));
}

static void test_prealloc(void **state)
{
    g_autofree char *path = test_path("prealloc");
    struct stat st;

    /* a shared file gets its blocks, whatever the thread count */
    for (int threads = 1; threads <= 3; threads += 2) {
        g_autofree char *args = g_strdup_printf(
            "{\"qom-type\": \"memory-backend-file\", \"id\": \"p%d\", "
            "\"size\": 4194304, \"mem-path\": \"%s%d\", \"share\": true, "
            "\"prealloc\": true, \"prealloc-threads\": %d}", threads, path,
            threads, threads);
        assert_null(run("object-add", args));
        g_autofree char *file = g_strdup_printf("%s%d", path, threads);
        assert_int_equal(stat(file, &st), 0);
        assert_true((uint64_t)st.st_blocks * 512 >= 4194304);
    }
    /* without prealloc it stays sparse */
    g_autofree char *args = g_strdup_printf(
        "{\"qom-type\": \"memory-backend-file\", \"id\": \"s0\", "
        "\"size\": 4194304, \"mem-path\": \"%s-sparse\", "
        "\"share\": true}", path);
    assert_null(run("object-add", args));
    g_autofree char *file = g_strdup_printf("%s-sparse", path);
    assert_int_equal(stat(file, &st), 0);
    assert_int_equal(st.st_blocks, 0);
    assert_null(run("object-del", "{\"id\": \"p1\"}"));
    assert_null(run("object-del", "{\"id\": \"p3\"}"));
    assert_null(run("object-del", "{\"id\": \"s0\"}"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_is_the_memory),
        cmocka_unit_test(test_private_and_readonly),
        cmocka_unit_test(test_dirty_log),
        cmocka_unit_test(test_dirty_reported_over_qmp),
        cmocka_unit_test(test_prealloc),
    };
    return cmocka_run_group_tests(tests, test_tmpdir_setup,
                                  test_tmpdir_teardown);
}
