/*
 * NBD wire constants (the protocol document of the NetworkBlockDevice
 * project) and the helpers that name them in messages.  Private to nbd/.
 */
#ifndef NBD_PROTO_H
#define NBD_PROTO_H

#include <stdint.h>

#define NBD_INIT_PASSWD         UINT64_C(0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC          UINT64_C(0x49484156454f5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC           UINT64_C(0x0003e889045565a9)
#define NBD_REQUEST_MAGIC       UINT32_C(0x25609513)
#define NBD_SIMPLE_REPLY_MAGIC  UINT32_C(0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C(0x668e33ef)

/* Handshake flags (server, then client). */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS         (1u << 0)
#define NBD_FLAG_READ_ONLY         (1u << 1)
#define NBD_FLAG_SEND_FLUSH        (1u << 2)
#define NBD_FLAG_SEND_FUA          (1u << 3)
#define NBD_FLAG_SEND_TRIM         (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF           (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN    (1u << 8)
#define NBD_FLAG_SEND_CACHE        (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO    (1u << 11)

enum {
    NBD_OPT_EXPORT_NAME = 1,
    NBD_OPT_ABORT = 2,
    NBD_OPT_LIST = 3,
    NBD_OPT_STARTTLS = 5,
    NBD_OPT_INFO = 6,
    NBD_OPT_GO = 7,
    NBD_OPT_STRUCTURED_REPLY = 8,
    NBD_OPT_LIST_META_CONTEXT = 9,
    NBD_OPT_SET_META_CONTEXT = 10,
};

#define NBD_REP_ERR(v) ((UINT32_C(1) << 31) | (v))
#define NBD_REP_ACK             1u
#define NBD_REP_SERVER          2u
#define NBD_REP_INFO            3u
#define NBD_REP_META_CONTEXT    4u
#define NBD_REP_ERR_UNSUP       NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY      NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID     NBD_REP_ERR(3)
#define NBD_REP_ERR_UNKNOWN     NBD_REP_ERR(6)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)

#define NBD_INFO_EXPORT         0
#define NBD_INFO_NAME           1
#define NBD_INFO_DESCRIPTION    2
#define NBD_INFO_BLOCK_SIZE     3

enum {
    NBD_CMD_READ = 0,
    NBD_CMD_WRITE = 1,
    NBD_CMD_DISC = 2,
    NBD_CMD_FLUSH = 3,
    NBD_CMD_TRIM = 4,
    NBD_CMD_CACHE = 5,
    NBD_CMD_WRITE_ZEROES = 6,
    NBD_CMD_BLOCK_STATUS = 7,
};

#define NBD_CMD_FLAG_FUA        (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE    (1u << 1)
#define NBD_CMD_FLAG_DF         (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE    (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO  (1u << 4)

#define NBD_REPLY_FLAG_DONE     (1u << 0)
#define NBD_REPLY_TYPE_NONE         0
#define NBD_REPLY_TYPE_OFFSET_DATA  1
#define NBD_REPLY_TYPE_OFFSET_HOLE  2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_ERROR        ((1u << 15) | 1)

#define NBD_STATE_HOLE          (1u << 0)
#define NBD_STATE_ZERO          (1u << 1)

/* Error numbers on the wire. */
enum {
    NBD_SUCCESS = 0,
    NBD_EPERM = 1,
    NBD_EIO = 5,
    NBD_ENOMEM = 12,
    NBD_EINVAL = 22,
    NBD_ENOSPC = 28,
    NBD_EOVERFLOW = 75,
    NBD_ENOTSUP = 95,
    NBD_ESHUTDOWN = 108,
};

/* Sizes QEMU 7.2 uses, which clients have come to rely on. */
#define NBD_MAX_BUFFER_SIZE     (32u * 1024 * 1024)
#define NBD_MAX_STRING_SIZE     4096
#define NBD_REQUEST_SIZE        28
/* One block status reply carries at most 1 MiB of extents. */
#define NBD_MAX_EXTENTS         (1024u * 1024 / 8)
/* Requests a client may have in flight before we stop reading more. */
#define NBD_MAX_INFLIGHT        16

/* Context ids: base:allocation, qemu:allocation-depth (as QEMU numbers them). */
#define NBD_META_ID_BASE_ALLOCATION  0
#define NBD_META_ID_ALLOCATION_DEPTH 1
/* The export's i-th dirty bitmap is NBD_META_ID_DIRTY_BITMAP + i. */
#define NBD_META_ID_DIRTY_BITMAP     2
/* qemu:dirty-bitmap: extents: the flag of a dirty one. */
#define NBD_STATE_DIRTY         (1u << 0)

const char *nbd_opt_name(uint32_t opt);
const char *nbd_cmd_name(uint16_t cmd);
uint32_t nbd_errno_from_system(int err);

static inline void nbd_put16(uint8_t *p, uint16_t v)
{
    p[0] = v >> 8;
    p[1] = v;
}
static inline void nbd_put32(uint8_t *p, uint32_t v)
{
    nbd_put16(p, v >> 16);
    nbd_put16(p + 2, v);
}
static inline void nbd_put64(uint8_t *p, uint64_t v)
{
    nbd_put32(p, v >> 32);
    nbd_put32(p + 4, v);
}
static inline uint16_t nbd_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t nbd_get32(const uint8_t *p)
{
    return (uint32_t)nbd_get16(p) << 16 | nbd_get16(p + 2);
}
static inline uint64_t nbd_get64(const uint8_t *p)
{
    return (uint64_t)nbd_get32(p) << 32 | nbd_get32(p + 4);
}

#endif
