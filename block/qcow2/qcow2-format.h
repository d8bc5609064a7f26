/*
 * The qcow2 on-disk format: constants and layouts from the specification
 * (docs/interop/qcow2.txt in QEMU's tree).  Everything on disk is big
 * endian; the structs below are the exact byte layout and are only ever
 * read and written through the be*_to_cpu / cpu_to_be* helpers.
 *
 * Private to block/qcow2/.
 */
#ifndef STRATA_QCOW2_FORMAT_H
#define STRATA_QCOW2_FORMAT_H

#include <endian.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define QCOW2_MAGIC 0x514649fbu          /* "QFI\xfb" */

#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21        /* QEMU's limit: 2 MiB */
#define QCOW2_DEFAULT_CLUSTER_BITS 16
#define QCOW2_MAX_BACKING_NAME 1023
#define QCOW2_MAX_L1_BYTES (32u * 1024 * 1024)      /* QEMU's limit */
#define QCOW2_MAX_REFTABLE_BYTES (8u * 1024 * 1024) /* QEMU's limit */
#define QCOW2_MAX_SNAPSHOTS 65536

/* Header, version 2 stops at incompatible_features (72 bytes). */
typedef struct __attribute__((packed)) Qcow2DiskHeader {
    uint32_t magic;
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* version 3 */
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    /* optional additional fields */
    uint8_t compression_type;
    uint8_t padding[7];
} Qcow2DiskHeader;

#define QCOW2_V2_HEADER_LEN 72
#define QCOW2_V3_MIN_HEADER_LEN 104
#define QCOW2_V3_HEADER_LEN 112          /* with compression_type, padded */

/* Feature bits. */
enum {
    QCOW2_INCOMPAT_DIRTY = 1ull << 0,
    QCOW2_INCOMPAT_CORRUPT = 1ull << 1,
    QCOW2_INCOMPAT_DATA_FILE = 1ull << 2,
    QCOW2_INCOMPAT_COMPRESSION = 1ull << 3,
    QCOW2_INCOMPAT_EXTL2 = 1ull << 4,
    QCOW2_INCOMPAT_MASK = 0x1f,

    QCOW2_COMPAT_LAZY_REFCOUNTS = 1ull << 0,
    QCOW2_COMPAT_MASK = 0x1,

    QCOW2_AUTOCLEAR_BITMAPS = 1ull << 0,
    QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1ull << 1,
    QCOW2_AUTOCLEAR_MASK = 0x3,
};

enum {
    QCOW2_CRYPT_NONE = 0,
    QCOW2_CRYPT_AES = 1,
    QCOW2_CRYPT_LUKS = 2,
};

enum {
    QCOW2_COMPRESSION_ZLIB = 0,
    QCOW2_COMPRESSION_ZSTD = 1,
};

/* Header extension types. */
enum {
    QCOW2_EXT_END = 0x00000000,
    QCOW2_EXT_BACKING_FORMAT = 0xe2792aca,
    QCOW2_EXT_FEATURE_TABLE = 0x6803f857,
    QCOW2_EXT_BITMAPS = 0x23852875,
    QCOW2_EXT_CRYPTO = 0x0537be77,
    QCOW2_EXT_DATA_FILE = 0x44415441,
};

typedef struct __attribute__((packed)) Qcow2ExtHeader {
    uint32_t magic;
    uint32_t len;
} Qcow2ExtHeader;

/* One feature-name-table entry (48 bytes). */
typedef struct __attribute__((packed)) Qcow2FeatureName {
    uint8_t type;                        /* 0 incompat, 1 compat, 2 autoclear */
    uint8_t bit;
    char name[46];
} Qcow2FeatureName;

/* The feature name table QEMU 7.2 writes into v3 headers (qcow2-header.c). */
#define QCOW2_FEATURE_TABLE_LEN 8
extern const Qcow2FeatureName qcow2_feature_table[QCOW2_FEATURE_TABLE_LEN];

/*
 * L1 entries: bits 9-55 the L2 table offset, bit 63 "copied" (refcount is
 * exactly 1, so the table may be written in place).
 */
#define L1E_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define L1E_RESERVED_MASK UINT64_C(0x7f000000000001ff)

/*
 * Standard L2 entries: bit 63 copied, bit 62 compressed, and for a standard
 * cluster bits 9-55 the host offset and bit 0 "reads as zeroes".
 */
#define QCOW_OFLAG_COPIED (UINT64_C(1) << 63)
#define QCOW_OFLAG_COMPRESSED (UINT64_C(1) << 62)
#define QCOW_OFLAG_ZERO (UINT64_C(1) << 0)
#define L2E_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define L2E_STD_RESERVED_MASK UINT64_C(0x3f000000000001fe)

/*
 * Compressed cluster descriptor (bits 0-61): x = 62 - (cluster_bits - 8)
 * low bits are the host offset, the bits above it up to 61 are the number
 * of additional 512-byte sectors the compressed data spans.
 */
#define QCOW2_COMPRESSED_SECTOR_SIZE 512

/* Extended L2: each entry is 128 bits, the second word a subcluster bitmap. */
#define QCOW2_SUBCLUSTERS 32
#define QCOW_L2_BITMAP_ALL_ALLOC UINT64_C(0x00000000ffffffff)
#define QCOW_L2_BITMAP_ALL_ZEROES UINT64_C(0xffffffff00000000)

/* Refcount table entries: bits 9-63 a refcount block offset. */
#define REFT_OFFSET_MASK UINT64_C(0xfffffffffffffe00)
#define REFT_RESERVED_MASK UINT64_C(0x1ff)

/* Snapshot table entry, fixed part (40 bytes), then extra data, id, name. */
typedef struct __attribute__((packed)) Qcow2DiskSnapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    uint16_t id_str_size;
    uint16_t name_size;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t vm_state_size;
    uint32_t extra_data_size;
} Qcow2DiskSnapshot;

typedef struct __attribute__((packed)) Qcow2DiskSnapshotExtra {
    uint64_t vm_state_size_large;
    uint64_t disk_size;
    uint64_t icount;                     /* -1: not recorded */
} Qcow2DiskSnapshotExtra;

/* Bitmaps extension data. */
typedef struct __attribute__((packed)) Qcow2BitmapsExt {
    uint32_t nb_bitmaps;
    uint32_t reserved32;
    uint64_t bitmap_directory_size;
    uint64_t bitmap_directory_offset;
} Qcow2BitmapsExt;

/* Sizes derived from cluster_bits. */
static inline uint64_t qcow2_cluster_size(unsigned cluster_bits)
{
    return 1ull << cluster_bits;
}

/* A header extension we do not know, kept to write it back unchanged. */
typedef struct Qcow2UnknownExt {
    uint32_t magic;
    uint32_t len;
    uint8_t data[];
} Qcow2UnknownExt;

/* Everything the header cluster says, in host order. */
typedef struct Qcow2HeaderFields {
    int version;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    /* Version 3 only: */
    uint64_t incompatible_features, compatible_features, autoclear_features;
    uint32_t refcount_order;
    uint8_t compression_type;
    /* Extensions and the backing file name; NULL / 0: absent. */
    const char *backing_file, *backing_format, *data_file;
    uint64_t crypto_header_offset, crypto_header_length;
    const Qcow2BitmapsExt *bitmaps_ext;
    const Qcow2UnknownExt *const *unknown_exts;
    size_t n_unknown_exts;
} Qcow2HeaderFields;

/*
 * The header cluster (cs bytes) as QEMU lays it out: the fixed part (72
 * bytes for version 2), the extensions in QEMU's order (backing format,
 * data file, crypto, feature names above 4 KiB clusters, bitmaps, unknown
 * ones), the end marker, then the backing file name.  The one place a
 * qcow2 header is composed (qcow2-header.c): creation and every rewrite
 * use it.  -ENOSPC when it does not fit in the cluster.
 */
int qcow2_header_layout(const Qcow2HeaderFields *f, uint8_t *buf, size_t cs);

#endif
