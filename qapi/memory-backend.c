/*
 * The memory backends (memory-backend-memfd, memory-backend-file) that
 * object-add and --object create, and query-memdev.
 *
 * A backend is guest RAM that the daemon maps and registers as a RAM block
 * (strata/ram-block.h) under the object's id, so that a migration can write
 * or fill it.  Properties, defaults, the order of the checks and the error
 * messages are QEMU 7.2's (backends/hostmem*.c, softmmu/physmem.c): a
 * management layer that creates backends in QEMU creates them here with the
 * same arguments and gets the same answers.
 *
 * strata's additions: mem-path may be "/dev/fdset/N", a descriptor the VM
 * monitor passed with add-fd (QEMU 7.2 would try to open or create that
 * path); x-strata-dirty-log names the dirty bitmap the VM monitor shares
 * (migration/ram-dirty.c).  docs/migration.md, "Memory", says why.
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "strata/error.h"
#include "strata/fdset.h"
#include "strata/ram-block.h"
#include "qapi-commands.h"
#include "objects.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#define F_SEAL_SEAL 0x0001
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#define HUGETLBFS_MAGIC 0x958458f6
#define MAX_NODES 128
#define MPOL_MF_STRICT (1 << 0)
#define MPOL_MF_MOVE (1 << 1)

struct MemoryBackend {
    ObjectType type;
    /* what query-memdev reports: the properties as set */
    uint64_t size;
    bool merge, dump, prealloc, share, reserve, discard_data;
    HostMemPolicy policy;
    uint32_t prealloc_threads;
    bool canonical_id, hugetlb, seal, readonly, pmem;
    uint64_t hugetlbsize, align;
    char *mem_path;
    unsigned long host_nodes[(MAX_NODES + 1 + 63) / 64];
    /* the mapping */
    void *host;             /* the RAM block's start */
    void *area;             /* what was mmapped (area <= host) */
    size_t area_len;
    uint64_t length;        /* the RAM block's length: size rounded up */
    uint32_t page_size;     /* the mapping's */
    int fd;
    bool fd_from_fdset;
    RamBlock *rb;
};

static const char *type_name(ObjectType t)
{
    return ObjectType_str(t);
}

/* both property structs start with their base's members, in its layout */
#define SAME_AT(T, m) \
    _Static_assert(offsetof(T, m) == offsetof(MemoryBackendProperties, m), \
                   #T " does not start with MemoryBackendProperties")
SAME_AT(MemoryBackendFileProperties, size);
SAME_AT(MemoryBackendFileProperties, x_use_canonical_path_for_ramblock_id);
SAME_AT(MemoryBackendMemfdProperties, size);
SAME_AT(MemoryBackendMemfdProperties, x_use_canonical_path_for_ramblock_id);

static MemoryBackendProperties *common_props(ObjectOptions *arg)
{
    return arg->qom_type == OBJECT_TYPE_MEMORY_BACKEND_FILE
           ? (MemoryBackendProperties *)&arg->u.memory_backend_file
           : (MemoryBackendProperties *)&arg->u.memory_backend_memfd;
}

bool memory_backend_setters_check(ObjectOptions *arg, GError **errp)
{
    MemoryBackendProperties *p = common_props(arg);

    if (p->size == 0) {
        error_setg(errp, "property 'size' of %s doesn't take value '0'",
                   type_name(arg->qom_type));
        return false;
    }
    if (p->has_prealloc_threads && p->prealloc_threads == 0) {
        error_setg(errp, "property 'prealloc-threads' of %s doesn't take "
                   "value '0'", type_name(arg->qom_type));
        return false;
    }
    /* a link to a thread-context, and strata has none: "" unsets it */
    if (p->prealloc_context && *p->prealloc_context) {
        g_set_error(errp, STRATA_ERROR, STRATA_ERROR_DEVICE_NOT_FOUND,
                    "Device '%s' not found", p->prealloc_context);
        return false;
    }
    if (p->has_prealloc && p->prealloc && p->has_reserve && !p->reserve) {
        error_setg(errp, "'prealloc=on' and 'reserve=off' are incompatible");
        return false;
    }
    for (uint16List *l = p->host_nodes; l; l = l->next) {
        if (l->value >= MAX_NODES) {
            error_setg(errp, "Invalid host-nodes value: %d", l->value);
            return false;
        }
    }
    bool is_file = arg->qom_type == OBJECT_TYPE_MEMORY_BACKEND_FILE;
    const char *log = is_file ? arg->u.memory_backend_file.x_strata_dirty_log
                              : arg->u.memory_backend_memfd.x_strata_dirty_log;
    bool qmp = is_file ? arg->u.memory_backend_file.x_strata_dirty_qmp
                       : arg->u.memory_backend_memfd.x_strata_dirty_qmp;
    if (log && qmp) {
        error_setg(errp, "x-strata-dirty-log and x-strata-dirty-qmp cannot "
                   "both be set: the dirty log is either shared or kept by "
                   "the daemon");
        return false;
    }
    if (arg->qom_type == OBJECT_TYPE_MEMORY_BACKEND_MEMFD) {
        MemoryBackendMemfdProperties *m = &arg->u.memory_backend_memfd;
        if (m->has_hugetlbsize && m->hugetlbsize == 0) {
            error_setg(errp, "Property '%s.hugetlbsize' doesn't take value "
                       "'0'", type_name(arg->qom_type));
            return false;
        }
    }
    return true;
}

/* QEMU's qemu_memfd_create(): the errors name the flags and sizes. */
static int memfd_open(const MemoryBackendMemfdProperties *m, uint64_t size,
                      GError **errp)
{
    bool seal = !m->has_seal || m->seal;
    uint64_t hs = m->has_hugetlbsize ? m->hugetlbsize : 0;
    unsigned shift = hs ? (unsigned)__builtin_ctzll(hs) : 0;
    unsigned flags = MFD_CLOEXEC;

    if (hs && (1ULL << shift) != hs) {
        error_setg(errp, "Hugepage size must be a power of 2");
        return -1;
    }
    if (m->has_hugetlb && m->hugetlb) {
        flags |= MFD_HUGETLB | (shift << MFD_HUGE_SHIFT);
    }
    if (seal) {
        flags |= MFD_ALLOW_SEALING;
    }
    int fd = memfd_create("memory-backend-memfd", flags);
    if (fd < 0) {
        error_setg(errp, "failed to create memfd with flags 0x%x: %s", flags,
                   g_strerror(errno));
        return -1;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        error_setg(errp, "failed to resize memfd to %" G_GUINT64_FORMAT
                   ": %s", size, g_strerror(errno));
        close(fd);
        return -1;
    }
    unsigned seals = F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL;
    if (seal && fcntl(fd, F_ADD_SEALS, seals) < 0) {
        error_setg(errp, "failed to add seals 0x%x: %s", seals,
                   g_strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * QEMU's file_ram_open(): an existing file, a new file, or (for a
 * directory) an unlinked temporary file in it; /dev/fdset/N is strata's.
 */
static int file_open(MemoryBackend *mb, const char *path, const char *name,
                     bool readonly, bool *created, GError **errp)
{
    *created = false;
    if (fdset_is_fdset_name(path)) {
        /* QEMU 7.2 would open() the name: say it as it would */
        int fd = fdset_open(path, readonly ? O_RDONLY : O_RDWR, NULL);
        if (fd < 0) {
            error_setg(errp, "can't open backing store %s for guest RAM: %s",
                       path, g_strerror(errno));
            return -1;
        }
        mb->fd_from_fdset = true;
        return fd;
    }
    for (;;) {
        int fd = open(path, (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
        if (fd >= 0) {
            return fd;
        }
        if (errno == ENOENT) {
            fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
            if (fd >= 0) {
                *created = true;
                return fd;
            }
        } else if (errno == EISDIR) {
            char *safe = g_strdelimit(g_strdup(name), "/", '_');
            char *tmpl = g_strdup_printf("%s/qemu_back_mem.%s.XXXXXX", path,
                                         safe);
            fd = mkostemp(tmpl, O_CLOEXEC);
            int e = errno;
            if (fd >= 0) {
                unlink(tmpl);
            }
            g_free(safe);
            g_free(tmpl);
            if (fd >= 0) {
                return fd;
            }
            errno = e;
        }
        if (errno != EEXIST && errno != EINTR) {
            error_setg(errp, "can't open backing store %s for guest RAM: %s",
                       path, g_strerror(errno));
            return -1;
        }
    }
}

/* QEMU's qemu_fd_getpagesize(): a hugetlbfs file has its huge pages. */
static uint32_t fd_page_size(int fd)
{
    struct statfs fs;

    if (fstatfs(fd, &fs) == 0 && (uint32_t)fs.f_type == HUGETLBFS_MAGIC) {
        return (uint32_t)fs.f_bsize;
    }
    return (uint32_t)sysconf(_SC_PAGESIZE);
}

/*
 * QEMU's qemu_ram_alloc_from_fd() and file_ram_alloc(): the checks of the
 * file's size and the alignment, then the mapping (aligned to @align by
 * mapping inside a larger reservation, as qemu_ram_mmap does).
 */
static bool map_fd(MemoryBackend *mb, uint64_t align, bool readonly,
                   GError **errp)
{
    uint64_t host_page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t size = (mb->size + host_page - 1) & ~(host_page - 1);
    struct stat st;
    int64_t file_size = fstat(mb->fd, &st) == 0 ? st.st_size : -1;

    if (file_size > 0 && (uint64_t)file_size < size) {
        error_setg(errp, "backing store size 0x%" G_GINT64_MODIFIER "x does "
                   "not match 'size' option 0x%" G_GINT64_MODIFIER "x",
                   file_size, size);
        return false;
    }
    uint64_t page = fd_page_size(mb->fd);
    if (align % page) {
        error_setg(errp, "alignment 0x%" G_GINT64_MODIFIER "x must be "
                   "multiples of page size 0x%" G_GINT64_MODIFIER "x",
                   align, page);
        return false;
    }
    if (align && (align & (align - 1))) {
        error_setg(errp, "alignment 0x%" G_GINT64_MODIFIER "x must be a "
                   "power of two", align);
        return false;
    }
    align = MAX(align, page);
    if (size < page) {
        error_setg(errp, "memory size 0x%" G_GINT64_MODIFIER "x must be "
                   "equal to or larger than page size 0x%" G_GINT64_MODIFIER
                   "x", size, page);
        return false;
    }
    size = (size + page - 1) & ~(page - 1);
    if (file_size == 0 && ftruncate(mb->fd, (off_t)size) < 0) {
        /* QEMU only prints this; the mapping then fails or works */
        g_printerr("ftruncate: %s\n", g_strerror(errno));
    }

    /* reserve size + align, then put the file at the aligned address */
    size_t total = size + align;
    void *area = mmap(NULL, total, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (area == MAP_FAILED) {
        error_setg(errp, "unable to map backing store for guest RAM: %s",
                   g_strerror(errno));
        return false;
    }
    uintptr_t start = ((uintptr_t)area + align - 1) & ~(uintptr_t)(align - 1);
    int flags = MAP_FIXED | (mb->share ? MAP_SHARED : MAP_PRIVATE) |
                (mb->reserve ? 0 : MAP_NORESERVE);
    int prot = PROT_READ | (readonly ? 0 : PROT_WRITE);
    void *host = MAP_FAILED;
    if (mb->pmem && mb->share) {
        /* persistent memory: writes durable without msync, where it is */
        host = mmap((void *)start, size, prot,
                    (flags & ~MAP_SHARED) | MAP_SHARED_VALIDATE | MAP_SYNC,
                    mb->fd, 0);
        if (host == MAP_FAILED && errno == EOPNOTSUPP) {
            g_printerr("warning: Cannot map file %s with "
                       "MAP_SYNC|MAP_SHARED_VALIDATE, try again without it\n",
                       mb->mem_path);
        }
    }
    if (host == MAP_FAILED) {
        host = mmap((void *)start, size, prot, flags, mb->fd, 0);
    }
    if (host == MAP_FAILED) {
        int e = errno;
        munmap(area, total);
        error_setg(errp, "unable to map backing store for guest RAM: %s",
                   g_strerror(e));
        return false;
    }
    mb->area = area;
    mb->area_len = total;
    mb->host = host;
    mb->length = size;
    mb->page_size = (uint32_t)page;
    return true;
}

typedef struct {
    MemoryBackend *mb;
    uint64_t start, end;    /* bytes, page aligned */
    int err;                /* errno, 0 if it worked */
} PreallocPart;

/*
 * The kernel faults the pages in (writable, so a shared file gets its
 * blocks); where it cannot (before Linux 5.14), touch one byte per page
 * by reading and writing it back, as QEMU does.
 */
static gpointer prealloc_part(gpointer opaque)
{
    PreallocPart *p = opaque;
    uint8_t *base = (uint8_t *)p->mb->host;

    if (madvise(base + p->start, p->end - p->start,
                MADV_POPULATE_WRITE) == 0) {
        return NULL;
    }
    if (errno != EINVAL) {
        p->err = errno;
        return NULL;
    }
    for (uint64_t off = p->start; off < p->end; off += p->mb->page_size) {
        volatile uint8_t *b = base + off;
        uint8_t v = *b;
        if (!p->mb->readonly) {
            *b = v;
        }
    }
    return NULL;
}

/* prealloc-threads threads, each a contiguous share of the pages. */
static bool prealloc(MemoryBackend *mb, uint32_t threads, GError **errp)
{
    uint64_t pages = mb->length / mb->page_size;
    uint32_t n = (uint32_t)MIN((uint64_t)MAX(threads, 1), pages);
    PreallocPart *parts = g_new0(PreallocPart, n);
    GThread **th = g_new0(GThread *, n);
    bool ok = true;

    for (uint32_t i = 0; i < n; i++) {
        parts[i].mb = mb;
        parts[i].start = pages * i / n * mb->page_size;
        parts[i].end = pages * (i + 1) / n * mb->page_size;
        if (i > 0) {
            th[i] = g_thread_new("prealloc", prealloc_part, &parts[i]);
        }
    }
    prealloc_part(&parts[0]);
    for (uint32_t i = 1; i < n; i++) {
        g_thread_join(th[i]);
    }
    for (uint32_t i = 0; i < n && ok; i++) {
        if (parts[i].err) {
            error_setg(errp, "qemu_prealloc_mem: preallocating memory "
                       "failed: %s", g_strerror(parts[i].err));
            ok = false;
        }
    }
    g_free(parts);
    g_free(th);
    return ok;
}

/*
 * host_memory_backend_memory_complete() after the allocation: advice,
 * the NUMA policy, then preallocation (under the policy).
 */
static bool apply_policy(MemoryBackend *mb, uint32_t prealloc_threads,
                         GError **errp)
{
    if (mb->merge) {
        madvise(mb->host, mb->length, MADV_MERGEABLE);
    }
    if (!mb->dump) {
        madvise(mb->host, mb->length, MADV_DONTDUMP);
    }

    unsigned last = 0;
    bool any = false;
    for (unsigned i = 0; i < MAX_NODES; i++) {
        if (mb->host_nodes[i / 64] & (1UL << (i % 64))) {
            last = i;
            any = true;
        }
    }
    unsigned long maxnode = any ? last + 1 : 0;
    if (maxnode && mb->policy == HOST_MEM_POLICY_DEFAULT) {
        error_setg(errp, "host-nodes must be empty for policy default, or "
                   "you should explicitly specify a policy other than "
                   "default");
        return false;
    }
    if (!maxnode && mb->policy != HOST_MEM_POLICY_DEFAULT) {
        error_setg(errp, "host-nodes must be set for policy %s",
                   HostMemPolicy_str(mb->policy));
        return false;
    }
    /* the policies have MPOL_*'s values; maxnode + 1 as QEMU passes it */
    if (maxnode && syscall(SYS_mbind, mb->host, mb->length, (int)mb->policy,
                           mb->host_nodes, maxnode + 1,
                           MPOL_MF_STRICT | MPOL_MF_MOVE) != 0) {
        error_setg(errp, "cannot bind memory to host NUMA nodes: %s",
                   g_strerror(errno));
        return false;
    }

    if (mb->prealloc && !prealloc(mb, prealloc_threads, errp)) {
        return false;
    }
    return true;
}

static void backend_unmap(MemoryBackend *mb)
{
    if (mb->area) {
        munmap(mb->area, mb->area_len);
        mb->area = NULL;
    }
    if (mb->fd >= 0) {
        if (mb->fd_from_fdset) {
            fdset_close(mb->fd);
        } else {
            close(mb->fd);
        }
        mb->fd = -1;
    }
}

/* Opens the dirty log the monitor shares and hands it to the RAM block. */
static bool attach_dirty_log(MemoryBackend *mb, const char *path,
                             GError **errp)
{
    int fd;

    if (fdset_is_fdset_name(path)) {
        fd = fdset_open(path, O_RDWR, NULL);
    } else {
        fd = open(path, O_RDWR | O_CLOEXEC);
    }
    if (fd < 0) {
        error_setg(errp, "can't open dirty log %s: %s", path,
                   g_strerror(errno));
        return false;
    }
    bool ok = ram_block_set_dirty_log(mb->rb, fd, errp);
    /* the log keeps its own mapping */
    if (fdset_is_fdset_name(path)) {
        fdset_close(fd);
    } else {
        close(fd);
    }
    return ok;
}

MemoryBackend *memory_backend_new(const char *id, ObjectOptions *arg,
                                  GError **errp)
{
    MemoryBackendProperties *p = common_props(arg);
    bool is_file = arg->qom_type == OBJECT_TYPE_MEMORY_BACKEND_FILE;
    MemoryBackendFileProperties *f = &arg->u.memory_backend_file;
    MemoryBackendMemfdProperties *m = &arg->u.memory_backend_memfd;
    MemoryBackend *mb = g_new0(MemoryBackend, 1);
    const char *dirty_log = is_file ? f->x_strata_dirty_log
                                    : m->x_strata_dirty_log;
    bool dirty_qmp = is_file ? f->has_x_strata_dirty_qmp && f->x_strata_dirty_qmp
                             : m->has_x_strata_dirty_qmp && m->x_strata_dirty_qmp;
    bool readonly = is_file && f->has_readonly && f->readonly;
    bool created = false;

    mb->type = arg->qom_type;
    mb->fd = -1;
    mb->size = p->size;
    mb->merge = !p->has_merge || p->merge;
    mb->dump = !p->has_dump || p->dump;
    mb->prealloc = p->has_prealloc && p->prealloc;
    /* a memfd is shared unless told otherwise, a file is not */
    mb->share = p->has_share ? p->share : !is_file;
    mb->reserve = !p->has_reserve || p->reserve;
    mb->policy = p->has_policy ? p->policy : HOST_MEM_POLICY_DEFAULT;
    for (uint16List *l = p->host_nodes; l; l = l->next) {
        mb->host_nodes[l->value / 64] |= 1UL << (l->value % 64);
    }
    mb->discard_data = is_file && f->has_discard_data && f->discard_data;
    mb->prealloc_threads = p->has_prealloc_threads ? p->prealloc_threads : 1;
    mb->canonical_id = p->has_x_use_canonical_path_for_ramblock_id &&
                       p->x_use_canonical_path_for_ramblock_id;
    mb->readonly = readonly;
    if (is_file) {
        mb->align = f->has_align ? f->align : 0;
        mb->mem_path = g_strdup(f->mem_path);
        mb->pmem = f->has_pmem && f->pmem;
    } else {
        mb->hugetlb = m->has_hugetlb && m->hugetlb;
        mb->seal = !m->has_seal || m->seal;
        mb->hugetlbsize = m->has_hugetlbsize ? m->hugetlbsize : 0;
    }

    if (is_file) {
        mb->fd = file_open(mb, f->mem_path, id, readonly, &created, errp);
    } else {
        mb->fd = memfd_open(m, mb->size, errp);
    }
    if (mb->fd < 0) {
        goto fail;
    }
    if (!map_fd(mb, is_file && f->has_align ? f->align : 0, readonly, errp)) {
        goto fail;
    }
    if (!apply_policy(mb, p->has_prealloc_threads ? p->prealloc_threads : 1,
                      errp)) {
        goto fail;
    }

    /* QEMU's RAM block idstr: the id, or the canonical path if asked */
    char *rb_id = mb->canonical_id ? g_strdup_printf("/objects/%s", id)
                            : g_strdup(id);
    /*
     * The descriptor is the block's memory only when the mapping is
     * shared: a private mapping's writes never reach the file.
     */
    mb->rb = ram_block_register(rb_id, mb->host, mb->length, mb->page_size,
                                mb->share ? mb->fd : -1, mb, errp);
    g_free(rb_id);
    if (!mb->rb) {
        goto fail;
    }
    mb->rb->readonly = readonly;
    if ((dirty_log && !attach_dirty_log(mb, dirty_log, errp)) ||
        (dirty_qmp && !ram_block_set_private_dirty_log(mb->rb, errp))) {
        ram_block_unregister(mb->rb);
        mb->rb = NULL;
        goto fail;
    }
    return mb;

fail:
    backend_unmap(mb);
    if (created) {
        unlink(f->mem_path);
    }
    g_free(mb->mem_path);
    g_free(mb);
    return NULL;
}

bool memory_backend_can_delete(MemoryBackend *mb, const char *id,
                               GError **errp)
{
    if (mb->rb && ram_block_busy(mb->rb)) {
        error_setg(errp, "object '%s' is in use, can not be deleted: "
                   "a save or load uses its RAM block '%s'", id, mb->rb->id);
        return false;
    }
    return true;
}

void memory_backend_free(MemoryBackend *mb)
{
    if (!mb) {
        return;
    }
    if (mb->rb) {
        ram_block_clear_dirty_log(mb->rb);
        ram_block_unregister(mb->rb);
    }
    if (mb->discard_data && mb->host) {
        madvise(mb->host, mb->length, MADV_REMOVE);
    }
    backend_unmap(mb);
    g_free(mb->mem_path);
    g_free(mb);
}

static json_t *host_nodes_json(const MemoryBackend *mb)
{
    json_t *a = json_array();

    for (unsigned n = 0; n < MAX_NODES; n++) {
        if (mb->host_nodes[n / 64] & (1UL << (n % 64))) {
            json_array_append_new(a, json_integer(n));
        }
    }
    return a;
}

json_t *memory_backend_qom_get(UserObject *o, const char *property)
{
    const MemoryBackend *mb = o->memory;
    const struct { const char *name; bool v; } bools[] = {
        { "share", mb->share }, { "dump", mb->dump },
        { "x-use-canonical-path-for-ramblock-id", mb->canonical_id },
        { "prealloc", mb->prealloc }, { "reserve", mb->reserve },
        { "merge", mb->merge }, { "hugetlb", mb->hugetlb },
        { "seal", mb->seal }, { "readonly", mb->readonly },
        { "pmem", mb->pmem }, { "discard-data", mb->discard_data },
    };
    const struct { const char *name; uint64_t v; } ints[] = {
        { "size", mb->size }, { "prealloc-threads", mb->prealloc_threads },
        { "hugetlbsize", mb->hugetlbsize }, { "align", mb->align },
    };

    for (size_t i = 0; i < G_N_ELEMENTS(bools); i++) {
        if (!strcmp(property, bools[i].name)) {
            return json_boolean(bools[i].v);
        }
    }
    for (size_t i = 0; i < G_N_ELEMENTS(ints); i++) {
        if (!strcmp(property, ints[i].name)) {
            return json_integer((json_int_t)ints[i].v);
        }
    }
    if (!strcmp(property, "policy")) {
        return json_string(HostMemPolicy_str(mb->policy));
    }
    if (!strcmp(property, "host-nodes")) {
        return host_nodes_json(mb);
    }
    if (!strcmp(property, "mem-path")) {
        return json_string(mb->mem_path ? mb->mem_path : "");
    }
    return json_string("");   /* prealloc-context: no thread-context */
}

MemdevList *qmp_query_memdev(GError **errp)
{
    GPtrArray *all = user_objects_in_qom_order();
    MemdevList *head = NULL;

    for (guint i = 0; i < all->len; i++) {
        UserObject *o = all->pdata[i];
        MemoryBackend *mb = o->memory;
        if (!mb) {
            continue;
        }
        Memdev *d = g_new0(Memdev, 1);
        d->id = g_strdup(o->id);
        d->size = mb->size;
        d->merge = mb->merge;
        d->dump = mb->dump;
        d->prealloc = mb->prealloc;
        d->share = mb->share;
        d->has_reserve = true;
        d->reserve = mb->reserve;
        uint16List **nt = &d->host_nodes;
        for (unsigned n = 0; n < MAX_NODES; n++) {
            if (mb->host_nodes[n / 64] & (1UL << (n % 64))) {
                *nt = g_new0(uint16List, 1);
                (*nt)->value = (uint16_t)n;
                nt = &(*nt)->next;
            }
        }
        d->policy = mb->policy;
        /* QEMU prepends as it walks /objects */
        MemdevList *e = g_new0(MemdevList, 1);
        e->value = d;
        e->next = head;
        head = e;
    }
    g_ptr_array_free(all, TRUE);
    return head;
}

void qmp_x_strata_memdev_dirty(const char *id, StrataMemdevRangeList *ranges,
                               GError **errp)
{
    UserObject *o = user_object_find(id);

    if (!o || !o->memory) {
        error_setg(errp, "Memory backend '%s' not found", id);
        return;
    }
    RamBlock *rb = o->memory->rb;
    if (!ram_block_has_dirty_log(rb)) {
        error_setg(errp, "Memory backend '%s' has no dirty log (create it "
                   "with x-strata-dirty-qmp or x-strata-dirty-log)", id);
        return;
    }
    /* all or nothing: check every range before marking */
    for (StrataMemdevRangeList *l = ranges; l; l = l->next) {
        if (l->value->offset > o->memory->size ||
            l->value->length > o->memory->size - l->value->offset) {
            error_setg(errp, "Range 0x%" G_GINT64_MODIFIER "x+0x%"
                       G_GINT64_MODIFIER "x is beyond the end of memory "
                       "backend '%s' (0x%" G_GINT64_MODIFIER "x bytes)",
                       l->value->offset, l->value->length, id,
                       o->memory->size);
            return;
        }
    }
    for (StrataMemdevRangeList *l = ranges; l; l = l->next) {
        bool ok = ram_block_mark_dirty(rb, l->value->offset,
                                       l->value->length, NULL);
        g_assert(ok);   /* checked above, and the block is no shorter */
    }
}

/*
 * qom-set on a backend that exists, as QEMU 7.2's setters answer: some
 * properties refuse before looking at the value, some after; a few act
 * (dump, merge, prealloc), the rest are stored and change nothing now.
 */
bool memory_backend_qom_set(UserObject *o, const char *property,
                            json_t *value, GError **errp)
{
    MemoryBackend *mb = o->memory;
    const char *type = type_name(o->type);

    if (!strcmp(property, "size")) {
        error_setg(errp, "cannot change property size of %s ", type);
        return false;
    }
    if (!strcmp(property, "hugetlbsize")) {
        error_setg(errp, "cannot change property value");
        return false;
    }
    if (!strcmp(property, "align")) {
        error_setg(errp, "cannot change property 'align' of %s", type);
        return false;
    }
    if (!strcmp(property, "prealloc-threads")) {
        if (!json_is_integer(value)) {
            error_setg(errp, "Parameter 'prealloc-threads' expects uint64");
            return false;
        }
        json_int_t v = json_integer_value(value);
        if (v < 0 || v > UINT32_MAX) {
            error_setg(errp, "Parameter 'prealloc-threads' expects "
                       "uint32_t");
            return false;
        }
        if (v == 0) {
            error_setg(errp, "property 'prealloc-threads' of %s doesn't "
                       "take value '0'", type);
            return false;
        }
        mb->prealloc_threads = (uint32_t)v;
        return true;
    }
    if (!strcmp(property, "host-nodes")) {
        if (!json_is_array(value)) {
            error_setg(errp, "Invalid parameter type for 'host-nodes', "
                       "expected: array");
            return false;
        }
        size_t i;
        json_t *e;
        json_array_foreach(value, i, e) {
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) > UINT16_MAX) {
                error_setg(errp, "Parameter 'host-nodes[%zu]' expects "
                           "uint16_t", i);
                return false;
            }
            if (json_integer_value(e) >= MAX_NODES) {
                error_setg(errp, "Invalid host-nodes value: %d",
                           (int)json_integer_value(e));
                return false;
            }
        }
        /* QEMU adds to the nodes it has; the memory stays where it is */
        json_array_foreach(value, i, e) {
            unsigned n = (unsigned)json_integer_value(e);
            mb->host_nodes[n / 64] |= 1UL << (n % 64);
        }
        return true;
    }

    /* the others read their value first */
    bool is_string = !strcmp(property, "mem-path") ||
                     !strcmp(property, "policy") ||
                     !strcmp(property, "prealloc-context");
    if (is_string ? !json_is_string(value) : !json_is_boolean(value)) {
        error_setg(errp, "Invalid parameter type for '%s', expected: %s",
                   property, is_string ? "string" : "boolean");
        return false;
    }
    if (!strcmp(property, "mem-path")) {
        error_setg(errp, "cannot change property 'mem-path' of %s", type);
        return false;
    }
    if (!strcmp(property, "policy")) {
        int pol = HostMemPolicy_parse(json_string_value(value));
        if (pol < 0) {
            error_setg(errp, "Parameter 'policy' does not accept value '%s'",
                       json_string_value(value));
            return false;
        }
        mb->policy = (HostMemPolicy)pol;
        return true;
    }
    if (!strcmp(property, "prealloc-context")) {
        if (*json_string_value(value)) {
            g_set_error(errp, STRATA_ERROR, STRATA_ERROR_DEVICE_NOT_FOUND,
                        "Device '%s' not found", json_string_value(value));
            return false;
        }
        return true;
    }

    bool v = json_is_true(value);
    if (!strcmp(property, "share") || !strcmp(property, "reserve")) {
        error_setg(errp, "cannot change property value");
        return false;
    }
    if (!strcmp(property, "readonly") || !strcmp(property, "pmem")) {
        error_setg(errp, "cannot change property '%s' of %s.", property,
                   type);
        return false;
    }
    if (!strcmp(property, "dump")) {
        madvise(mb->host, mb->length, v ? MADV_DODUMP : MADV_DONTDUMP);
        mb->dump = v;
    } else if (!strcmp(property, "merge")) {
        madvise(mb->host, mb->length, v ? MADV_MERGEABLE : MADV_UNMERGEABLE);
        mb->merge = v;
    } else if (!strcmp(property, "prealloc")) {
        if (v && !mb->reserve) {
            error_setg(errp, "'prealloc=on' and 'reserve=off' are "
                       "incompatible");
            return false;
        }
        /* turning it off later changes nothing, as in QEMU */
        if (v && !mb->prealloc) {
            if (!prealloc(mb, mb->prealloc_threads, errp)) {
                return false;
            }
            mb->prealloc = true;
        }
    } else if (!strcmp(property, "discard-data")) {
        mb->discard_data = v;
    } else if (!strcmp(property, "x-use-canonical-path-for-ramblock-id")) {
        mb->canonical_id = v;   /* the RAM block keeps its id */
    } else if (!strcmp(property, "hugetlb")) {
        mb->hugetlb = v;        /* stored only, as QEMU 7.2 does */
    } else if (!strcmp(property, "seal")) {
        mb->seal = v;
    }
    return true;
}
