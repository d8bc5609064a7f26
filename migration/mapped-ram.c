/*
 * The migration stream around the pages: layout, the pieces strata writes,
 * and the walk over a file QEMU or strata wrote (strata/mapped-ram.h).
 * The pages themselves move in migration/channels.c.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <zlib.h>

#include "strata/device-state.h"
#include "strata/mapped-ram.h"
#include "mr-internal.h"

/*
 * The section id of "ram": ids link PART/END to START.  Not 0: QEMU's
 * loader finds a PART/END's section by the id its START had, and every
 * section it has not seen a START for has 0 there.
 */
#define RAM_SECTION_ID 1
#define RAM_SECTION_VERSION 4
#define MR_VMDESC "{\"page_size\": 4096, \"devices\": []}"

static uint64_t round_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

/* ---- writing ---- */

static void put_u8(GByteArray *b, uint8_t v)
{
    g_byte_array_append(b, &v, 1);
}

static void put_be32(GByteArray *b, uint32_t v)
{
    uint32_t be = GUINT32_TO_BE(v);
    g_byte_array_append(b, (const guint8 *)&be, 4);
}

static void put_be64(GByteArray *b, uint64_t v)
{
    uint64_t be = GUINT64_TO_BE(v);
    g_byte_array_append(b, (const guint8 *)&be, 8);
}

static void put_str8(GByteArray *b, const char *s)
{
    size_t n = strlen(s);
    put_u8(b, (uint8_t)n);
    g_byte_array_append(b, (const guint8 *)s, n);
}

static size_t stream_head_len(void)
{
    return 4 + 4 + 1 + 4 + 1 + 3 + 4 + 4 + 8;
}

static size_t block_entry_len(const MrBlock *b)
{
    return 1 + strlen(b->id) + 8 + MR_HDR_LEN;
}

uint64_t mr_layout(MrBlock *blocks, unsigned nb_blocks, uint64_t offset)
{
    uint64_t pos = offset + stream_head_len();

    for (unsigned i = 0; i < nb_blocks; i++) {
        MrBlock *b = &blocks[i];
        b->page_size = MR_PAGE_SIZE;
        b->bitmap_offset = pos + block_entry_len(b);
        b->pages_offset = round_up(b->bitmap_offset +
                                   mr_bitmap_bytes(mr_block_pages(b)),
                                   MR_PAGES_ALIGN);
        pos = b->pages_offset + b->used;
    }
    return pos;
}

static void put_block_entry(GByteArray *out, const MrBlock *b)
{
    put_str8(out, b->id);
    put_be64(out, b->used);
    put_be32(out, MR_HDR_VERSION);
    put_be64(out, b->page_size);
    put_be64(out, b->bitmap_offset);
    put_be64(out, b->pages_offset);
}

GByteArray *mr_stream_head(const MrBlock *blocks, unsigned nb_blocks)
{
    GByteArray *out = g_byte_array_new();
    uint64_t total = 0;

    for (unsigned i = 0; i < nb_blocks; i++) {
        total += blocks[i].used;
    }
    put_be32(out, MR_STREAM_MAGIC);
    put_be32(out, MR_STREAM_VERSION);
    put_u8(out, MR_SEC_START);
    put_be32(out, RAM_SECTION_ID);
    put_str8(out, "ram");
    put_be32(out, 0);                   /* instance */
    put_be32(out, RAM_SECTION_VERSION);
    put_be64(out, total | MR_RAM_MEM_SIZE);
    if (nb_blocks) {
        put_block_entry(out, &blocks[0]);
    }
    return out;
}

GByteArray *mr_block_entry(const MrBlock *b)
{
    GByteArray *out = g_byte_array_new();
    put_block_entry(out, b);
    return out;
}

/*
 * After the last block's pages: the end of the setup part, the RAM
 * section's END part, then QEMU_VM_EOF.  Device state sections will go
 * between the RAM END and EOF (docs/migration.md).
 */
GByteArray *mr_stream_tail(void)
{
    GByteArray *out = mr_stream_ram_end();
    GByteArray *eof = mr_stream_eof(MR_VMDESC);

    g_byte_array_append(out, eof->data, eof->len);
    g_byte_array_unref(eof);
    return out;
}

/* The RAM section's end: after it, device state sections (device-state.c). */
GByteArray *mr_stream_ram_end(void)
{
    GByteArray *out = g_byte_array_new();

    put_be64(out, MR_RAM_EOS);
    put_u8(out, MR_SEC_FOOTER);
    put_be32(out, RAM_SECTION_ID);
    put_u8(out, MR_SEC_END);
    put_be32(out, RAM_SECTION_ID);
    put_be64(out, MR_RAM_EOS);
    put_u8(out, MR_SEC_FOOTER);
    put_be32(out, RAM_SECTION_ID);
    return out;
}

/* QEMU_VM_EOF and the JSON description of the device sections. */
GByteArray *mr_stream_eof(const char *vmdesc)
{
    GByteArray *out = g_byte_array_new();

    put_u8(out, MR_SEC_EOF);
    /* QEMU's loader expects its JSON description after EOF (it warns
     * otherwise); it lists strata's device state streams, if any */
    put_u8(out, MR_SEC_VMDESCRIPTION);
    put_be32(out, (uint32_t)strlen(vmdesc));
    g_byte_array_append(out, (const guint8 *)vmdesc, strlen(vmdesc));
    return out;
}

/* ---- reading ---- */

void mr_file_info_free(MrFileInfo *info)
{
    if (!info) {
        return;
    }
    for (unsigned i = 0; i < info->nb_blocks; i++) {
        g_free(info->blocks[i].id);
    }
    g_free(info->blocks);
    g_free(info->machine);
    g_ptr_array_unref(info->capabilities);
    g_ptr_array_unref(info->unread);
    if (info->states) {
        g_ptr_array_unref(info->states);
    }
    g_free(info);
}

/* A cursor over the file, read with pread in small buffered pieces. */
typedef struct Cursor {
    int fd;
    uint64_t pos;
    uint64_t size;
    uint8_t buf[4096];
    uint64_t buf_pos;           /* file offset of buf[0] */
    size_t buf_len;
    uint8_t *crc_buf;           /* CRC_PIECE bytes, made on first use */
} Cursor;

/* The piece a state's CRC is computed over while the parse steps on. */
#define CRC_PIECE (256u << 10)

static bool cur_read(Cursor *c, void *dst, size_t n, GError **errp)
{
    uint8_t *d = dst;

    while (n) {
        if (c->pos >= c->buf_pos && c->pos < c->buf_pos + c->buf_len) {
            size_t off = c->pos - c->buf_pos;
            size_t k = MIN(n, c->buf_len - off);
            memcpy(d, c->buf + off, k);
            d += k;
            n -= k;
            c->pos += k;
            continue;
        }
        if (c->pos >= c->size) {
            error_setg(errp, "Migration file ends at offset %" G_GUINT64_FORMAT
                       " inside the stream (truncated?)", c->size);
            return false;
        }
        ssize_t r;
        do {
            r = pread(c->fd, c->buf, sizeof(c->buf), (off_t)c->pos);
        } while (r < 0 && errno == EINTR);
        if (r < 0) {
            error_setg_errno(errp, errno, "Could not read the migration file");
            return false;
        }
        if (r == 0) {
            c->size = c->pos;
            continue;
        }
        c->buf_pos = c->pos;
        c->buf_len = (size_t)r;
    }
    return true;
}

static bool get_u8(Cursor *c, uint8_t *v, GError **errp)
{
    return cur_read(c, v, 1, errp);
}

static bool get_be16(Cursor *c, uint16_t *v, GError **errp)
{
    uint16_t be;
    if (!cur_read(c, &be, 2, errp)) {
        return false;
    }
    *v = GUINT16_FROM_BE(be);
    return true;
}

static bool get_be32(Cursor *c, uint32_t *v, GError **errp)
{
    uint32_t be;
    if (!cur_read(c, &be, 4, errp)) {
        return false;
    }
    *v = GUINT32_FROM_BE(be);
    return true;
}

static bool get_be64(Cursor *c, uint64_t *v, GError **errp)
{
    uint64_t be;
    if (!cur_read(c, &be, 8, errp)) {
        return false;
    }
    *v = GUINT64_FROM_BE(be);
    return true;
}

/* A u8-length string; the names in a stream are printable ids. */
static char *get_str8(Cursor *c, GError **errp)
{
    uint8_t n;
    char *s;

    if (!get_u8(c, &n, errp)) {
        return NULL;
    }
    s = g_malloc(n + 1u);
    if (!cur_read(c, s, n, errp)) {
        g_free(s);
        return NULL;
    }
    s[n] = 0;
    if (strlen(s) != n || !g_utf8_validate(s, n, NULL)) {
        error_setg(errp, "Migration file has a malformed name at offset %"
                   G_GUINT64_FORMAT, c->pos - n);
        g_free(s);
        return NULL;
    }
    return s;
}

/*
 * QEMU's configuration section: the machine type, then subsections.  Only
 * those whose contents are known can be stepped over.
 */
static bool parse_configuration(Cursor *c, MrFileInfo *info, GError **errp)
{
    uint32_t len;
    uint8_t t;

    if (!get_be32(c, &len, errp)) {
        return false;
    }
    if (len > 255) {
        error_setg(errp, "Migration file: machine type name of %u bytes", len);
        return false;
    }
    info->machine = g_malloc0(len + 1u);
    if (!cur_read(c, info->machine, len, errp)) {
        return false;
    }
    for (;;) {
        uint64_t at = c->pos;
        uint32_t version;
        if (!get_u8(c, &t, errp)) {
            return false;
        }
        if (t != MR_SEC_SUBSECTION) {
            c->pos = at;
            return true;
        }
        g_autofree char *name = get_str8(c, errp);
        if (!name || !get_be32(c, &version, errp)) {
            return false;
        }
        if (strcmp(name, "configuration/capabilities") == 0) {
            uint32_t n;
            if (!get_be32(c, &n, errp)) {
                return false;
            }
            for (uint32_t i = 0; i < n; i++) {
                char *cap = get_str8(c, errp);
                if (!cap) {
                    return false;
                }
                g_ptr_array_add(info->capabilities, cap);
            }
        } else if (strcmp(name, "configuration/uuid") == 0) {
            uint8_t uuid[16];
            if (!cur_read(c, uuid, sizeof(uuid), errp)) {
                return false;
            }
        } else if (strcmp(name, "configuration/target-page-bits") == 0) {
            uint32_t bits;
            if (!get_be32(c, &bits, errp)) {
                return false;
            }
            if (bits != 12) {
                error_setg(errp, "Migration file has target page bits %u, "
                           "strata reads 12 (4 KiB pages) only", bits);
                return false;
            }
        } else {
            error_setg(errp, "Migration file has a configuration subsection "
                       "'%s' strata does not know", name);
            return false;
        }
    }
}

/* The "ram" section's setup part: the block list and mapped-ram headers. */
static bool parse_ram_words(Cursor *c, MrFileInfo *info, GError **errp)
{
    for (;;) {
        uint64_t w, flags, addr;
        if (!get_be64(c, &w, errp)) {
            return false;
        }
        flags = w & (MR_PAGE_SIZE - 1);
        addr = w & ~(uint64_t)(MR_PAGE_SIZE - 1);
        if (flags & MR_RAM_EOS) {
            return true;
        }
        if (flags == MR_RAM_MULTIFD_FLUSH) {
            continue;
        }
        if (flags != MR_RAM_MEM_SIZE) {
            error_setg(errp, "Migration file has RAM data with flags 0x%"
                       G_GINT64_MODIFIER "x, not the mapped-ram layout",
                       flags);
            return false;
        }
        if (info->nb_blocks) {
            error_setg(errp, "Migration file lists its RAM blocks twice");
            return false;
        }
        uint64_t left = addr;
        while (left) {
            MrBlock b = { 0 };
            uint32_t version;
            b.id = get_str8(c, errp);
            if (!b.id) {
                return false;
            }
            if (!get_be64(c, &b.used, errp) ||
                !get_be32(c, &version, errp) ||
                !get_be64(c, &b.page_size, errp) ||
                !get_be64(c, &b.bitmap_offset, errp) ||
                !get_be64(c, &b.pages_offset, errp)) {
                g_free(b.id);
                return false;
            }
            if (version != MR_HDR_VERSION) {
                error_setg(errp, "Migration file with mapped-ram header "
                           "version %u not supported (RAM block '%s')",
                           version, b.id);
                g_free(b.id);
                return false;
            }
            if (b.page_size != MR_PAGE_SIZE) {
                error_setg(errp, "Migration file has RAM block '%s' with "
                           "page size %" G_GUINT64_FORMAT ", strata reads %u",
                           b.id, b.page_size, MR_PAGE_SIZE);
                g_free(b.id);
                return false;
            }
            if (!b.used || b.used > left || b.used % MR_PAGE_SIZE) {
                error_setg(errp, "Migration file has RAM block '%s' of %"
                           G_GUINT64_FORMAT " bytes, which does not fit the "
                           "RAM size it announced", b.id, b.used);
                g_free(b.id);
                return false;
            }
            if (b.pages_offset % MR_PAGE_SIZE ||
                b.bitmap_offset > b.pages_offset ||
                b.pages_offset - b.bitmap_offset <
                    mr_bitmap_bytes(mr_block_pages(&b)) ||
                b.pages_offset > UINT64_MAX / 2 || b.used > UINT64_MAX / 4) {
                error_setg(errp, "Migration file has RAM block '%s' with "
                           "invalid bitmap or pages offsets", b.id);
                g_free(b.id);
                return false;
            }
            for (unsigned i = 0; i < info->nb_blocks; i++) {
                if (strcmp(info->blocks[i].id, b.id) == 0) {
                    error_setg(errp, "Migration file lists RAM block '%s' "
                               "twice", b.id);
                    g_free(b.id);
                    return false;
                }
            }
            left -= b.used;
            info->blocks = g_renew(MrBlock, info->blocks, info->nb_blocks + 1);
            info->blocks[info->nb_blocks++] = b;
            /* the stream resumes after the block's pages */
            c->pos = b.pages_offset + b.used;
        }
    }
}

static bool check_footer(Cursor *c, uint32_t section_id, GError **errp)
{
    uint8_t t;
    uint32_t id;
    uint64_t at = c->pos;

    if (!get_u8(c, &t, errp)) {
        return false;
    }
    if (t != MR_SEC_FOOTER) {
        /* old machine types send no footers */
        c->pos = at;
        return true;
    }
    if (!get_be32(c, &id, errp)) {
        return false;
    }
    if (id != section_id) {
        error_setg(errp, "Migration file: section footer for section %u "
                   "where section %u ends", id, section_id);
        return false;
    }
    return true;
}

/* ---- device state sections (docs/migration.md "Device state") ---- */

/* The file's rounds are indexed, not read: a bound on the index. */
#define MR_STATE_MAX_ROUNDS (1u << 20)

static void dev_state_free(gpointer p)
{
    MrDevState *d = p;
    g_free(d->id);
    g_array_unref(d->rounds);
    g_free(d);
}

static MrDevState *state_by_sid(MrFileInfo *info, uint32_t sid)
{
    for (unsigned i = 0; i < info->states->len; i++) {
        MrDevState *d = info->states->pdata[i];
        if (d->section_id == sid) {
            return d;
        }
    }
    return NULL;
}

/* Adds @n bytes of the file at c->pos to *crc and steps over them. */
static bool crc_skip(Cursor *c, uint64_t n, uint32_t *crc, GError **errp)
{
    /* One buffer for the whole parse: a state arrives in many small
     * chunks, and a buffer per chunk made the allocator churn. */
    if (!c->crc_buf) {
        c->crc_buf = g_malloc(CRC_PIECE);
    }
    uint8_t *buf = c->crc_buf;

    while (n) {
        ssize_t r = pread(c->fd, buf, MIN(n, CRC_PIECE), (off_t)c->pos);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            error_setg_errno(errp, r < 0 ? errno : EIO, "Could not read the "
                             "migration file");
            return false;
        }
        *crc = (uint32_t)crc32(*crc, buf, (uInt)r);
        c->pos += (uint64_t)r;
        n -= (uint64_t)r;
    }
    return true;
}

/*
 * One round: chunks (u32 length, bytes) up to a 0 length, then the
 * section's CRC-32 (device-state.c says of which bytes).  Every chunk must
 * lie inside the file and the CRC must match, so a truncated or damaged
 * stream fails here, before anything is loaded.
 */
static bool walk_round(Cursor *c, MrDevState *d, GError **errp)
{
    uint64_t at = c->pos;
    uint32_t crc = (uint32_t)crc32(0, NULL, 0), want;

    if (d->rounds->len >= MR_STATE_MAX_ROUNDS) {
        error_setg(errp, "Migration file has more than %u rounds of device "
                   "state '%s'", MR_STATE_MAX_ROUNDS, d->id);
        return false;
    }
    for (;;) {
        uint32_t len;
        if (c->pos + 4 > c->size) {
            error_setg(errp, "Migration file ends inside device state '%s' "
                       "(truncated?)", d->id);
            return false;
        }
        if (!get_be32(c, &len, errp)) {
            return false;
        }
        if (d->iterative) {
            /* a round's CRC covers the records as the back end wrote them */
            uint32_t be = GUINT32_TO_BE(len);
            crc = (uint32_t)crc32(crc, (const Bytef *)&be, 4);
        }
        if (!len) {
            break;
        }
        if (c->pos + len > c->size) {
            error_setg(errp, "Migration file ends inside device state '%s' "
                       "(truncated?)", d->id);
            return false;
        }
        if (!crc_skip(c, len, &crc, errp)) {
            return false;
        }
        d->bytes += len;
    }
    if (!get_be32(c, &want, errp)) {
        return false;
    }
    if (crc != want) {
        error_setg(errp, "Migration file's device state '%s' is damaged: "
                   "%s %u has CRC-32 0x%08x, the file says 0x%08x", d->id,
                   d->iterative ? "round" : "section",
                   d->iterative ? d->rounds->len + 1 : 1, crc, want);
        return false;
    }
    g_array_append_val(d->rounds, at);
    return true;
}

/* A START or FULL section named "x-strata-state:ID". */
static bool parse_state_start(Cursor *c, MrFileInfo *info, uint8_t type,
                              uint32_t sid, uint32_t ram_sid,
                              const char *name, uint32_t instance,
                              uint32_t version, GError **errp)
{
    const char *id = name + strlen("x-strata-state:");

    if (version != DS_SECTION_VERSION || instance != 0) {
        error_setg(errp, "Migration file has device state '%s' in format "
                   "version %u instance %u, strata reads version %u "
                   "instance 0", id, version, instance, DS_SECTION_VERSION);
        return false;
    }
    if (sid == ram_sid || state_by_sid(info, sid)) {
        error_setg(errp, "Migration file reuses section id %u for device "
                   "state '%s'", sid, id);
        return false;
    }
    for (unsigned i = 0; i < info->states->len; i++) {
        MrDevState *o = info->states->pdata[i];
        if (strcmp(o->id, id) == 0) {
            error_setg(errp, "Migration file has device state '%s' twice", id);
            return false;
        }
    }
    MrDevState *d = g_new0(MrDevState, 1);
    d->id = g_strdup(id);
    d->section_id = sid;
    d->iterative = type == MR_SEC_START;
    d->rounds = g_array_new(false, false, sizeof(uint64_t));
    g_ptr_array_add(info->states, d);
    if (d->iterative) {
        /* START opens the stream and carries no data: an empty chunk list */
        uint32_t len;
        if (!get_be32(c, &len, errp)) {
            return false;
        }
        if (len) {
            error_setg(errp, "Migration file has data in the start section "
                       "of device state '%s'", id);
            return false;
        }
    } else {
        if (!walk_round(c, d, errp)) {
            return false;
        }
        d->ended = true;
    }
    return check_footer(c, sid, errp);
}

/* A PART (one round) or END (no data) of an iterative stream. */
static bool parse_state_part(Cursor *c, MrDevState *d, uint8_t type,
                             GError **errp)
{
    if (!d->iterative || d->ended) {
        error_setg(errp, "Migration file continues device state '%s' after "
                   "its end", d->id);
        return false;
    }
    if (type == MR_SEC_PART) {
        if (!walk_round(c, d, errp)) {
            return false;
        }
    } else {
        uint32_t len;
        if (!get_be32(c, &len, errp)) {
            return false;
        }
        if (len) {
            error_setg(errp, "Migration file has data in the end section of "
                       "device state '%s'", d->id);
            return false;
        }
        d->ended = true;
    }
    return check_footer(c, d->section_id, errp);
}

static bool states_ended(MrFileInfo *info, GError **errp)
{
    for (unsigned i = 0; i < info->states->len; i++) {
        MrDevState *d = info->states->pdata[i];
        if (!d->ended) {
            error_setg(errp, "Migration file's device state '%s' has no end "
                       "section (truncated?)", d->id);
            return false;
        }
    }
    return true;
}

/*
 * QEMU ends its stream with QEMU_VM_EOF and a JSON description of its
 * device sections (QEMU_VM_VMDESCRIPTION 0x06, a 32-bit length, the JSON)
 * that reaches exactly to the end of the file.  strata cannot step over a
 * device section (its length is nowhere in the stream), so the description
 * is both where the names of the sections not read come from and the only
 * sign that the file is whole: a file cut or damaged after its RAM section
 * has none, and must not restore as if nothing were missing.
 */
#define VMDESC_MAX (64u << 20)
#define VMDESC_WINDOW (1u << 20)

/* A candidate at @p: EOF byte, 0x06, the length up to the end, '{'. */
static bool vmdesc_at(const uint8_t *b, uint64_t p, uint64_t size)
{
    uint32_t len;

    if (b[0] != MR_SEC_EOF || b[1] != MR_SEC_VMDESCRIPTION || b[6] != '{') {
        return false;
    }
    memcpy(&len, b + 2, 4);
    return p + 6 + (uint64_t)GUINT32_FROM_BE(len) == size;
}

/*
 * Looks for the description from the end back to @from (where the walk
 * stopped), newest candidate first: JSON text holds no 0x00 or 0x06 bytes,
 * so no candidate lies inside the real description.  Returns the parsed
 * JSON's "devices" array holder, or NULL.
 */
static json_t *find_vmdesc(int fd, uint64_t from, uint64_t size)
{
    uint64_t lowest = size > (uint64_t)VMDESC_MAX + 7 ?
                      size - VMDESC_MAX - 7 : 0;
    g_autofree uint8_t *buf = g_malloc(VMDESC_WINDOW + 6);

    if (lowest < from) {
        lowest = from;
    }
    if (size < 7 || size - 7 < lowest) {
        return NULL;
    }
    /* candidates p in [lo, hi]; the window holds bytes [lo, hi + 7) */
    uint64_t hi = size - 7;
    for (;;) {
        uint64_t lo = hi - lowest >= VMDESC_WINDOW ? hi - VMDESC_WINDOW + 1
                                                    : lowest;
        size_t n = (size_t)(hi - lo + 7);
        if (pread(fd, buf, n, (off_t)lo) != (ssize_t)n) {
            return NULL;
        }
        for (uint64_t p = hi + 1; p-- > lo;) {
            if (!vmdesc_at(buf + (p - lo), p, size)) {
                continue;
            }
            size_t len = (size_t)(size - p - 6);
            g_autofree char *text = g_malloc(len);
            if (pread(fd, text, len, (off_t)(p + 6)) != (ssize_t)len) {
                return NULL;
            }
            json_t *j = json_loadb(text, len, 0, NULL);
            if (json_is_array(json_object_get(j, "devices"))) {
                return j;
            }
            json_decref(j);
        }
        if (lo == lowest) {
            return NULL;
        }
        hi = lo - 1;
    }
}

/* @from: the offset where the walk stopped, at device section @first. */
static bool check_vmdesc(int fd, uint64_t from, MrFileInfo *info,
                         const char *first, GError **errp)
{
    json_t *j = find_vmdesc(fd, from, info->file_size);
    json_t *devs = json_object_get(j, "devices");
    GHashTable *seen;
    size_t k;
    json_t *d;

    if (!j) {
        error_setg(errp, "Migration file has device sections strata cannot "
                   "read (the first: '%s') and does not end with QEMU's "
                   "description of them, so strata cannot tell whether it "
                   "is whole: it is truncated or damaged (or QEMU wrote it "
                   "with -machine suppress-vmdesc=on)", first);
        return false;
    }
    seen = g_hash_table_new(g_str_hash, g_str_equal);
    for (unsigned i = 0; i < info->unread->len; i++) {
        g_hash_table_add(seen, info->unread->pdata[i]);
    }
    json_array_foreach(devs, k, d) {
        const char *name = json_string_value(json_object_get(d, "name"));
        if (name && !g_hash_table_contains(seen, name) &&
            strcmp(name, "ram") != 0) {
            char *s = g_strdup(name);
            g_ptr_array_add(info->unread, s);
            g_hash_table_add(seen, s);
        }
    }
    g_hash_table_unref(seen);
    json_decref(j);
    return true;
}

MrFileInfo *mr_file_parse(int fd, uint64_t offset, GError **errp)
{
    MrFileInfo *info = g_new0(MrFileInfo, 1);
    Cursor *c = g_new0(Cursor, 1);
    struct stat st;
    uint32_t magic, version;
    bool ram_seen = false;
    uint32_t ram_sid = 0;
    bool ok = false;

    info->capabilities = g_ptr_array_new_with_free_func(g_free);
    info->unread = g_ptr_array_new_with_free_func(g_free);
    info->states = g_ptr_array_new_with_free_func(dev_state_free);
    if (fstat(fd, &st) < 0) {
        error_setg_errno(errp, errno, "Could not stat the migration file");
        goto out;
    }
    info->file_size = (uint64_t)st.st_size;
    c->fd = fd;
    c->pos = offset;
    c->size = info->file_size;

    if (!get_be32(c, &magic, errp) || !get_be32(c, &version, errp)) {
        goto out;
    }
    if (magic != MR_STREAM_MAGIC) {
        error_setg(errp, "Not a migration stream");
        goto out;
    }
    if (version != MR_STREAM_VERSION) {
        error_setg(errp, "Unsupported migration stream version");
        goto out;
    }
    for (;;) {
        uint8_t t;
        uint32_t sid, instance, sversion;
        if (!get_u8(c, &t, errp)) {
            goto out;
        }
        switch (t) {
        case MR_SEC_EOF:
            info->reached_eof = true;
            ok = states_ended(info, errp);
            goto out;
        case MR_SEC_CONFIGURATION:
            if (info->machine || ram_seen) {
                error_setg(errp, "Migration file has a misplaced "
                           "configuration section");
                goto out;
            }
            if (!parse_configuration(c, info, errp)) {
                goto out;
            }
            for (unsigned i = 0; i < info->capabilities->len; i++) {
                const char *cap = info->capabilities->pdata[i];
                if (strcmp(cap, "x-ignore-shared") == 0 ||
                    strcmp(cap, "postcopy-ram") == 0) {
                    error_setg(errp, "Migration file was written with "
                               "capability '%s', which strata does not read",
                               cap);
                    goto out;
                }
            }
            break;
        case MR_SEC_START:
        case MR_SEC_FULL: {
            if (!get_be32(c, &sid, errp)) {
                goto out;
            }
            g_autofree char *name = get_str8(c, errp);
            if (!name || !get_be32(c, &instance, errp) ||
                !get_be32(c, &sversion, errp)) {
                goto out;
            }
            if (g_str_has_prefix(name, "x-strata-state:") && ram_seen) {
                if (!parse_state_start(c, info, t, sid, ram_sid, name,
                                       instance, sversion, errp)) {
                    goto out;
                }
                break;
            }
            if (strcmp(name, "ram") != 0 || instance != 0 || ram_seen) {
                g_ptr_array_add(info->unread, g_strdup(name));
                ok = check_vmdesc(fd, c->pos, info, name, errp);
                goto out;
            }
            if (sversion != RAM_SECTION_VERSION) {
                error_setg(errp, "Migration file has RAM section version %u, "
                           "strata reads %u", sversion, RAM_SECTION_VERSION);
                goto out;
            }
            ram_seen = true;
            ram_sid = sid;
            if (!parse_ram_words(c, info, errp) ||
                !check_footer(c, sid, errp)) {
                goto out;
            }
            if (!info->nb_blocks) {
                error_setg(errp, "Migration file's RAM section lists no "
                           "RAM blocks");
                goto out;
            }
            break;
        }
        case MR_SEC_PART:
        case MR_SEC_END:
            if (!get_be32(c, &sid, errp)) {
                goto out;
            }
            if (ram_seen && state_by_sid(info, sid)) {
                if (!parse_state_part(c, state_by_sid(info, sid), t, errp)) {
                    goto out;
                }
                break;
            }
            if (!ram_seen || sid != ram_sid) {
                error_setg(errp, "Migration file continues section %u "
                           "before it started", sid);
                goto out;
            }
            if (!parse_ram_words(c, info, errp) ||
                !check_footer(c, sid, errp)) {
                goto out;
            }
            break;
        case MR_SEC_COMMAND: {
            uint16_t cmd, len;
            if (!get_be16(c, &cmd, errp) || !get_be16(c, &len, errp)) {
                goto out;
            }
            c->pos += len;
            break;
        }
        default:
            error_setg(errp, "Migration file has an unknown section type "
                       "0x%x at offset %" G_GUINT64_FORMAT, t, c->pos - 1);
            goto out;
        }
    }
out:
    g_free(c->crc_buf);
    g_free(c);
    if (ok && !ram_seen) {
        error_setg(errp, "Migration file has no RAM section");
        ok = false;
    }
    if (!ok) {
        mr_file_info_free(info);
        return NULL;
    }
    return info;
}

bool mr_pwrite_all(int fd, const void *buf, size_t len, uint64_t off,
                   MrStats *stats, GError **errp)
{
    const uint8_t *p = buf;

    while (len) {
        ssize_t r = pwrite(fd, p, len, (off_t)off);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            error_setg_errno(errp, r < 0 ? errno : EIO,
                             "Could not write the migration file");
            return false;
        }
        p += r;
        len -= (size_t)r;
        off += (uint64_t)r;
        if (stats) {
            atomic_fetch_add(&stats->transferred, (uint64_t)r);
        }
    }
    return true;
}

bool mr_put_bytes(int fd, GByteArray *b, uint64_t off, MrStats *stats,
                  GError **errp)
{
    bool ok = mr_pwrite_all(fd, b->data, b->len, off, stats, errp);

    g_byte_array_unref(b);
    return ok;
}
