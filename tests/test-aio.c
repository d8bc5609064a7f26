/*
 * The three I/O back ends (threads, native, io_uring) through aio_co_rw():
 * many requests in flight, more than a ring or context holds, O_DIRECT,
 * short reads at EOF, errors, flush, and engines owned by other threads.
 *
 * Every test runs once per back end; native and io_uring skip when the
 * kernel or sandbox refuses them.  Files live under /var/tmp because
 * O_DIRECT needs a real filesystem (tmpfs refuses it).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <cmocka.h>
#include <glib.h>
#include <glib/gstdio.h>
#include "strata/aio.h"
#include "strata/coroutine.h"
#include "strata/iov.h"
#include "strata/loop.h"

#define BLK 4096

static char *tmp_dir;

typedef struct {
    AioType type;
    bool direct; /* open the files O_DIRECT */
} Variant;

static const Variant v_threads = { AIO_THREADS, false };
static const Variant v_threads_direct = { AIO_THREADS, true };
static const Variant v_native = { AIO_NATIVE, true };
static const Variant v_uring = { AIO_IO_URING, false };
static const Variant v_uring_direct = { AIO_IO_URING, true };

/* ---- helpers ---- */

typedef struct {
    AioEngine *e;
    int fd;
    AioOp op;
    uint64_t offset;
    struct iovec iov[3];
    int niov;
    int64_t ret;
    int entered_done; /* counts completions: must end at exactly 1 */
    int *pending;
} Job;

static void job_entry(void *opaque)
{
    Job *j = opaque;
    j->ret = aio_co_rw(j->e, j->fd, j->op, j->offset, j->iov, j->niov);
    j->entered_done++;
    (*j->pending)--;
}

/* Start every job from outside coroutine context, then drive the loop. */
static void run_jobs(Job *jobs, int n)
{
    int pending = n;
    for (int i = 0; i < n; i++) {
        jobs[i].pending = &pending;
        jobs[i].entered_done = 0;
        co_enter(co_create(job_entry, &jobs[i]));
    }
    LOOP_WAIT_WHILE(pending > 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(jobs[i].entered_done, 1);
    }
}

static int64_t run_one(AioEngine *e, int fd, AioOp op, uint64_t offset,
                       void *buf, size_t len)
{
    Job j = { .e = e, .fd = fd, .op = op, .offset = offset, .niov = 1 };
    j.iov[0].iov_base = buf;
    j.iov[0].iov_len = len;
    if (op == AIO_OP_FLUSH) {
        j.niov = 0;
    }
    run_jobs(&j, 1);
    return j.ret;
}

static AioEngine *engine_or_skip(const Variant *v)
{
    GError *err = NULL;
    AioEngine *e = aio_engine_get(v->type, &err);
    if (!e) {
        assert_int_not_equal(v->type, AIO_THREADS);
        print_message("skipping %s: %s\n", aio_type_names[v->type],
                      err->message);
        g_error_free(err);
        skip();
    }
    assert_int_equal(aio_engine_type(e), v->type);
    return e;
}

static int open_file(const Variant *v, const char *name, char **path_out)
{
    char *path = g_build_filename(tmp_dir, name, NULL);
    int flags = O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC;
    if (v->direct) {
        flags |= O_DIRECT;
    }
    int fd = open(path, flags, 0600);
    if (fd < 0) {
        fail_msg("open %s: %s", path, strerror(errno));
    }
    if (path_out) {
        *path_out = path;
    } else {
        g_free(path);
    }
    return fd;
}

static void fill(uint8_t *buf, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        buf[i] = (uint8_t)(seed * 31 + i * 7 + (i >> 9));
    }
}

/*
 * Kernel objects an engine of this type owns: io_uring instances among the
 * open fds, or Linux AIO rings among the mappings.
 */
static int count_engine_objects(AioType type)
{
    int n = 0;
    if (type == AIO_IO_URING) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        while ((de = readdir(d))) {
            char *link = g_strdup_printf("/proc/self/fd/%s", de->d_name);
            char *target = g_file_read_link(link, NULL);
            n += target && strstr(target, "io_uring") != NULL;
            g_free(target);
            g_free(link);
        }
        closedir(d);
    } else if (type == AIO_NATIVE) {
        char *maps = NULL;
        g_file_get_contents("/proc/self/maps", &maps, NULL, NULL);
        for (char *p = maps; p && (p = strstr(p, "/[aio]")); p++) {
            n++;
        }
        g_free(maps);
    }
    return n;
}

/* ---- tests ---- */

/*
 * n writes in flight at once, each BLK bytes split over up to three iovec
 * elements, then n reads into separate buffers; n above 256 exceeds the
 * io_uring SQ and the libaio context and exercises the waiting queues.
 */
static void concurrent_rw(const Variant *v, int n)
{
    AioEngine *e = engine_or_skip(v);
    int fd = open_file(v, "concurrent", NULL);
    uint8_t *wbuf = aligned_alloc_buf(BLK, (size_t)n * BLK);
    uint8_t *rbuf = aligned_alloc_buf(BLK, (size_t)n * BLK);
    Job *jobs = g_new0(Job, n);

    fill(wbuf, (size_t)n * BLK, 1);
    memset(rbuf, 0xee, (size_t)n * BLK);
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < n; i++) {
            /* Write back to front so that completions come out of order. */
            int blk = pass == 0 ? n - 1 - i : i;
            uint8_t *buf = (pass == 0 ? wbuf : rbuf) + (size_t)blk * BLK;
            Job *j = &jobs[i];
            *j = (Job){ .e = e, .fd = fd, .offset = (uint64_t)blk * BLK,
                        .op = pass == 0 ? AIO_OP_WRITE : AIO_OP_READ };
            /* O_DIRECT wants each element aligned to the sector size. */
            size_t unit = v->direct ? 1024 : 1000;
            switch (i % 3) {
            case 0:
                j->iov[0] = (struct iovec){ buf, BLK };
                j->niov = 1;
                break;
            case 1:
                j->iov[0] = (struct iovec){ buf, unit };
                j->iov[1] = (struct iovec){ buf + unit, BLK - unit };
                j->niov = 2;
                break;
            default:
                j->iov[0] = (struct iovec){ buf, unit };
                j->iov[1] = (struct iovec){ buf + unit, unit * 2 };
                j->iov[2] = (struct iovec){ buf + unit * 3, BLK - unit * 3 };
                j->niov = 3;
                break;
            }
        }
        run_jobs(jobs, n);
        for (int i = 0; i < n; i++) {
            assert_int_equal(jobs[i].ret, BLK);
        }
    }
    assert_memory_equal(wbuf, rbuf, (size_t)n * BLK);

    /* What the kernel has must match too, not just what we read back. */
    uint8_t *check = aligned_alloc_buf(BLK, (size_t)n * BLK);
    assert_int_equal(pread(fd, check, (size_t)n * BLK, 0), (ssize_t)n * BLK);
    assert_memory_equal(wbuf, check, (size_t)n * BLK);

    aligned_free(check);
    g_free(jobs);
    aligned_free(wbuf);
    aligned_free(rbuf);
    close(fd);
}

static void test_concurrent_64(void **state)
{
    concurrent_rw(*state, 64);
}

static void test_concurrent_600(void **state)
{
    concurrent_rw(*state, 600);
}

/*
 * One coroutine issuing requests one after the other: each new request is
 * queued from inside the completion handler that woke the coroutine.
 */
typedef struct {
    AioEngine *e;
    int fd;
    uint8_t *buf;
    int rounds;
    bool ok;
} SeqArgs;

static void seq_entry(void *opaque)
{
    SeqArgs *a = opaque;
    a->ok = true;
    for (int i = 0; i < a->rounds; i++) {
        struct iovec iov = { a->buf, BLK };
        uint64_t off = (uint64_t)(i * 7 % a->rounds) * BLK;
        fill(a->buf, BLK, (unsigned)i + 100);
        if (aio_co_rw(a->e, a->fd, AIO_OP_WRITE, off, &iov, 1) != BLK) {
            a->ok = false;
        }
        memset(a->buf, 0, BLK);
        if (aio_co_rw(a->e, a->fd, AIO_OP_READ, off, &iov, 1) != BLK) {
            a->ok = false;
        }
        uint8_t *expect = g_malloc(BLK);
        fill(expect, BLK, (unsigned)i + 100);
        if (memcmp(expect, a->buf, BLK) != 0) {
            a->ok = false;
        }
        g_free(expect);
        if (i % 16 == 0 && aio_co_rw(a->e, a->fd, AIO_OP_FLUSH, 0, NULL, 0)) {
            a->ok = false;
        }
    }
}

static void test_sequential(void **state)
{
    const Variant *v = *state;
    SeqArgs a = { .e = engine_or_skip(v), .rounds = 200 };
    a.fd = open_file(v, "sequential", NULL);
    a.buf = aligned_alloc_buf(BLK, BLK);
    co_run_sync(seq_entry, &a);
    assert_true(a.ok);
    aligned_free(a.buf);
    close(a.fd);
}

static void test_short_read(void **state)
{
    const Variant *v = *state;
    AioEngine *e = engine_or_skip(v);
    char *path;
    int fd = open_file(v, "short", &path);
    /* O_DIRECT files can still end anywhere; make it end mid-block. */
    size_t size = v->direct ? BLK + 512 : BLK + 1000;
    uint8_t *data = g_malloc(size);
    fill(data, size, 7);
    /* Through another descriptor: O_DIRECT wants aligned buffers. */
    int w = open(path, O_WRONLY);
    assert_int_equal(pwrite(w, data, size, 0), (ssize_t)size);
    close(w);

    uint8_t *buf = aligned_alloc_buf(BLK, 2 * BLK);
    memset(buf, 0xee, 2 * BLK);
    assert_int_equal(run_one(e, fd, AIO_OP_READ, BLK, buf, 2 * BLK),
                     (int64_t)(size - BLK));
    assert_memory_equal(buf, data + BLK, size - BLK);
    /* Entirely past the end: nothing. */
    assert_int_equal(run_one(e, fd, AIO_OP_READ, 4 * BLK, buf, BLK), 0);
    /* A multi-element vector across EOF. */
    Job j = { .e = e, .fd = fd, .op = AIO_OP_READ, .offset = 0, .niov = 2 };
    j.iov[0] = (struct iovec){ buf, BLK };
    j.iov[1] = (struct iovec){ buf + BLK, BLK };
    run_jobs(&j, 1);
    assert_int_equal(j.ret, (int64_t)size);
    assert_memory_equal(buf, data, size);

    aligned_free(buf);
    g_free(data);
    close(fd);
    g_free(path);
}

static void test_bad_fd(void **state)
{
    const Variant *v = *state;
    AioEngine *e = engine_or_skip(v);
    uint8_t *buf = aligned_alloc_buf(BLK, BLK);
    memset(buf, 0, BLK);

    /* A descriptor number that nothing in this test will open. */
    int fd = 4000;
    while (fcntl(fd, F_GETFD) != -1) {
        fd++;
    }
    assert_int_equal(run_one(e, fd, AIO_OP_READ, 0, buf, BLK), -EBADF);
    assert_int_equal(run_one(e, fd, AIO_OP_WRITE, 0, buf, BLK), -EBADF);
    assert_int_equal(run_one(e, fd, AIO_OP_FLUSH, 0, NULL, 0), -EBADF);
    assert_int_equal(run_one(e, -1, AIO_OP_READ, 0, buf, BLK), -EBADF);

    /* A bad request among good ones fails alone. */
    int good = open_file(v, "badfd-mixed", NULL);
    Job jobs[9];
    uint8_t *bufs = aligned_alloc_buf(BLK, 9 * BLK);
    for (int i = 0; i < 9; i++) {
        jobs[i] = (Job){ .e = e, .fd = i == 4 ? fd : good, .op = AIO_OP_WRITE,
                         .offset = (uint64_t)i * BLK, .niov = 1 };
        jobs[i].iov[0] = (struct iovec){ bufs + i * BLK, BLK };
    }
    run_jobs(jobs, 9);
    for (int i = 0; i < 9; i++) {
        assert_int_equal(jobs[i].ret, i == 4 ? -EBADF : BLK);
    }

    /* Writing to a read-only descriptor. */
    char *path = g_build_filename(tmp_dir, "badfd-mixed", NULL);
    int ro = open(path, O_RDONLY | (v->direct ? O_DIRECT : 0));
    assert_true(ro >= 0);
    assert_int_equal(run_one(e, ro, AIO_OP_WRITE, 0, buf, BLK), -EBADF);
    assert_int_equal(run_one(e, ro, AIO_OP_READ, 0, buf, BLK), BLK);

    close(ro);
    g_free(path);
    aligned_free(bufs);
    close(good);
    aligned_free(buf);
}

/*
 * Enough requests that the batch is submitted from inside the coroutine
 * that queued the last one, with failures refused at submission both for
 * that coroutine itself and for others still waiting.
 */
static void test_bad_fd_in_batch(void **state)
{
    const Variant *v = *state;
    AioEngine *e = engine_or_skip(v);
    enum { N = 100 };
    int bad = 4000;
    while (fcntl(bad, F_GETFD) != -1) {
        bad++;
    }
    int good = open_file(v, "badfd-batch", NULL);
    Job *jobs = g_new0(Job, N);
    uint8_t *bufs = aligned_alloc_buf(BLK, (size_t)N * BLK);
    memset(bufs, 0x11, (size_t)N * BLK);
    for (int i = 0; i < N; i++) {
        bool fail = i == 4 || i == 31 || i == 32 || i == 63 || i == 99;
        jobs[i] = (Job){ .e = e, .fd = fail ? bad : good, .niov = 1,
                         .op = i % 2 ? AIO_OP_READ : AIO_OP_WRITE,
                         .offset = (uint64_t)i * BLK };
        jobs[i].iov[0] = (struct iovec){ bufs + (size_t)i * BLK, BLK };
    }
    /* Reads of blocks nobody wrote yet read a hole, not EOF. */
    assert_int_equal(ftruncate(good, (off_t)N * BLK), 0);
    run_jobs(jobs, N);
    for (int i = 0; i < N; i++) {
        bool fail = jobs[i].fd == bad;
        assert_int_equal(jobs[i].ret, fail ? -EBADF : BLK);
    }
    aligned_free(bufs);
    g_free(jobs);
    close(good);
}

static void test_misaligned_direct(void **state)
{
    const Variant *v = *state;
    AioEngine *e = engine_or_skip(v);
    int fd = open_file(v, "misaligned", NULL);
    uint8_t *buf = aligned_alloc_buf(BLK, 2 * BLK);
    memset(buf, 1, 2 * BLK);
    /* The kernel refuses O_DIRECT transfers off the sector grid. */
    assert_int_equal(run_one(e, fd, AIO_OP_WRITE, 0, buf + 1, BLK), -EINVAL);
    assert_int_equal(run_one(e, fd, AIO_OP_WRITE, 0, buf, BLK), BLK);
    assert_int_equal(run_one(e, fd, AIO_OP_READ, 100, buf, BLK), -EINVAL);
    aligned_free(buf);
    close(fd);
}

static void test_flush(void **state)
{
    const Variant *v = *state;
    AioEngine *e = engine_or_skip(v);
    int fd = open_file(v, "flush", NULL);
    uint8_t *buf = aligned_alloc_buf(BLK, BLK);
    fill(buf, BLK, 3);
    assert_int_equal(run_one(e, fd, AIO_OP_WRITE, 0, buf, BLK), BLK);
    assert_int_equal(run_one(e, fd, AIO_OP_FLUSH, 0, NULL, 0), 0);

    /* Flushes racing with writes all succeed. */
    Job jobs[16];
    uint8_t *bufs = aligned_alloc_buf(BLK, 16 * BLK);
    for (int i = 0; i < 16; i++) {
        jobs[i] = (Job){ .e = e, .fd = fd, .niov = 1,
                         .op = i % 4 == 3 ? AIO_OP_FLUSH : AIO_OP_WRITE,
                         .offset = (uint64_t)i * BLK };
        jobs[i].iov[0] = (struct iovec){ bufs + i * BLK, BLK };
    }
    run_jobs(jobs, 16);
    for (int i = 0; i < 16; i++) {
        assert_int_equal(jobs[i].ret, i % 4 == 3 ? 0 : BLK);
    }
    aligned_free(bufs);
    aligned_free(buf);
    close(fd);
}

static void test_engine_cached(void **state)
{
    const Variant *v = *state;
    AioEngine *e = engine_or_skip(v);
    assert_ptr_equal(aio_engine_get(v->type, NULL), e);
}

/* An engine made in another thread works there and is freed when it ends. */
typedef struct {
    const Variant *v;
    char *path;
    int64_t ret;
    AioEngine *engine;
} ThreadArgs;

static void thread_co(void *opaque)
{
    ThreadArgs *a = opaque;
    uint8_t *buf = aligned_alloc_buf(BLK, BLK);
    struct iovec iov = { buf, BLK };
    int fd = open(a->path, O_RDWR | (a->v->direct ? O_DIRECT : 0));
    fill(buf, BLK, 9);
    a->ret = aio_co_rw(a->engine, fd, AIO_OP_WRITE, BLK, &iov, 1);
    if (a->ret == BLK) {
        memset(buf, 0, BLK);
        a->ret = aio_co_rw(a->engine, fd, AIO_OP_READ, BLK, &iov, 1);
    }
    close(fd);
    aligned_free(buf);
}

static gpointer thread_main(gpointer opaque)
{
    ThreadArgs *a = opaque;
    GMainContext *ctx = g_main_context_new();
    g_main_context_push_thread_default(ctx);
    a->engine = aio_engine_get(a->v->type, NULL);
    if (a->engine) {
        co_run_sync(thread_co, a);
    }
    g_main_context_pop_thread_default(ctx);
    g_main_context_unref(ctx);
    return NULL;
}

static void test_other_thread(void **state)
{
    const Variant *v = *state;
    AioEngine *mine = engine_or_skip(v);
    char *path;
    close(open_file(v, "thread", &path));

    int before = count_engine_objects(v->type);
    for (int round = 0; round < 3; round++) {
        ThreadArgs a = { .v = v, .path = path };
        GThread *t = g_thread_new("aio-test", thread_main, &a);
        g_thread_join(t);
        assert_non_null(a.engine);
        assert_ptr_not_equal(a.engine, mine);
        assert_int_equal(a.ret, BLK);
    }
    /* The rings and contexts went with their threads. */
    assert_int_equal(count_engine_objects(v->type), before);
    g_free(path);
}

static void test_names_and_default(void **state)
{
    assert_string_equal(aio_type_names[AIO_THREADS], "threads");
    assert_string_equal(aio_type_names[AIO_NATIVE], "native");
    assert_string_equal(aio_type_names[AIO_IO_URING], "io_uring");
    assert_null(aio_type_names[AIO__MAX]);

    AioType t = aio_default_type();
    assert_true(t == AIO_IO_URING || t == AIO_THREADS);
    assert_int_equal(aio_default_type(), t);
    GError *err = NULL;
    AioEngine *e = aio_engine_get(AIO_IO_URING, &err);
    /* The default is io_uring exactly when a ring can be had. */
    assert_int_equal(t == AIO_IO_URING, e != NULL);
    if (err) {
        assert_non_null(strstr(err->message, "io_uring"));
        g_error_free(err);
    }
    assert_null(aio_engine_get(AIO__MAX, &err));
    assert_non_null(err);
    g_error_free(err);
}

static void test_invalid_args(void **state)
{
    const Variant *v = *state;
    AioEngine *e = engine_or_skip(v);
    int fd = open_file(v, "invalid", NULL);
    uint8_t *buf = aligned_alloc_buf(BLK, BLK);
    Job j = { .e = e, .fd = fd, .op = AIO_OP_READ, .niov = -1 };
    run_jobs(&j, 1);
    assert_int_equal(j.ret, -EINVAL);
    j = (Job){ .e = e, .fd = fd, .op = (AioOp)42, .niov = 0 };
    run_jobs(&j, 1);
    assert_int_equal(j.ret, -EINVAL);
    assert_int_equal(run_one(e, fd, AIO_OP_READ, UINT64_MAX - 10, buf, BLK),
                     -EINVAL);
    aligned_free(buf);
    close(fd);
}

/*
 * A kernel or sandbox that refuses both: a child process, run from a fresh
 * exec so that no thread exists yet, installs a seccomp filter that fails
 * io_uring_setup with ENOSYS and io_setup with EAGAIN, then checks the
 * fallback and the messages.  Exits 0 when all is well, 77 if seccomp is
 * not available here.
 */
static int refused_child(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EAGAIN),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { G_N_ELEMENTS(filter), filter };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        return 77;
    }

    GError *err = NULL;
    if (aio_default_type() != AIO_THREADS) {
        fprintf(stderr, "default is not threads\n");
        return 1;
    }
    if (aio_engine_get(AIO_IO_URING, &err) ||
        !strstr(err->message, "io_uring") ||
        !strstr(err->message, g_strerror(ENOSYS))) {
        fprintf(stderr, "io_uring: %s\n", err ? err->message : "no error");
        return 1;
    }
    g_clear_error(&err);
    if (aio_engine_get(AIO_NATIVE, &err) ||
        !strstr(err->message, "linux AIO context") ||
        !strstr(err->message, "fs.aio-max-nr")) {
        fprintf(stderr, "native: %s\n", err ? err->message : "no error");
        return 1;
    }
    printf("%s\n", err->message);
    g_clear_error(&err);
    /* Threads still work. */
    AioEngine *e = aio_engine_get(AIO_THREADS, NULL);
    char buf[16];
    int fd = open("/proc/self/exe", O_RDONLY);
    if (!e || run_one(e, fd, AIO_OP_READ, 0, buf, 4) != 4 ||
        memcmp(buf, "\177ELF", 4)) {
        fprintf(stderr, "threads engine failed\n");
        return 1;
    }
    close(fd);
    return 0;
}

static void test_refused(void **state)
{
    char *argv[] = { "/proc/self/exe", "--refused-child", NULL };
    char *out = NULL, *err = NULL;
    int status;
    GError *gerr = NULL;
    assert_true(g_spawn_sync(NULL, argv, NULL, G_SPAWN_DEFAULT, NULL, NULL,
                             &out, &err, &status, &gerr));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 77) {
        g_free(out);
        g_free(err);
        skip();
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fail_msg("child failed (%d): %s", status, err);
    }
    assert_string_equal(out, "failed to create linux AIO context (the "
                             "system-wide limit fs.aio-max-nr is exhausted): "
                             "Resource temporarily unavailable\n");
    g_free(out);
    g_free(err);
}

/* ---- fixture ---- */

static int group_setup(void **state)
{
    /* O_DIRECT needs a real filesystem: not tmpfs. */
    tmp_dir = g_strdup("/var/tmp/strata-test-aio-XXXXXX");
    if (!g_mkdtemp(tmp_dir)) {
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    GDir *d = g_dir_open(tmp_dir, 0, NULL);
    const char *name;
    while (d && (name = g_dir_read_name(d))) {
        char *p = g_build_filename(tmp_dir, name, NULL);
        g_unlink(p);
        g_free(p);
    }
    if (d) {
        g_dir_close(d);
    }
    g_rmdir(tmp_dir);
    g_free(tmp_dir);
    return 0;
}

#define FOR_VARIANT(fn, v) { #fn "/" #v, fn, NULL, NULL, (void *)&(v) }
#define ALL_VARIANTS(fn)                                                      \
    FOR_VARIANT(fn, v_threads), FOR_VARIANT(fn, v_threads_direct),            \
        FOR_VARIANT(fn, v_native), FOR_VARIANT(fn, v_uring),                  \
        FOR_VARIANT(fn, v_uring_direct)

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--refused-child")) {
        return refused_child();
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_default),
        cmocka_unit_test(test_refused),
        ALL_VARIANTS(test_engine_cached),
        ALL_VARIANTS(test_concurrent_64),
        ALL_VARIANTS(test_concurrent_600),
        ALL_VARIANTS(test_sequential),
        ALL_VARIANTS(test_short_read),
        ALL_VARIANTS(test_bad_fd),
        ALL_VARIANTS(test_bad_fd_in_batch),
        ALL_VARIANTS(test_flush),
        ALL_VARIANTS(test_invalid_args),
        ALL_VARIANTS(test_other_thread),
        FOR_VARIANT(test_misaligned_direct, v_threads_direct),
        FOR_VARIANT(test_misaligned_direct, v_native),
        FOR_VARIANT(test_misaligned_direct, v_uring_direct),
    };
    return cmocka_run_group_tests_name("aio", tests, group_setup,
                                       group_teardown);
}
