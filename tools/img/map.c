/*
 * strata-img map [--object objectdef] [--image-opts] [-f fmt]
 *                [--start-offset=offset] [--max-length=len]
 *                [--output=ofmt] [-U] filename
 *
 * qemu-img map: the image's block status from start to end, each range
 * described by the first node of the backing chain that decides it (its
 * depth below the top), whether it reads as data or zeroes, whether that
 * node allocates it ("present") and where its bytes live (offset in the
 * file named in the human output).  Adjacent ranges that say the same
 * thing (and, with an offset, continue it) are merged before printing.
 * The human table lists only ranges that hold data; it treats zero and
 * unallocated alike so that they merge, and refuses ranges whose data
 * has no plain offset (compressed clusters) as qemu-img does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/block-ops.h"
#include "strata/error.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "img.h"

enum {
    OPTION_OUTPUT = IMG_OPTION_FIRST_PRIVATE,
};

typedef struct MapEntry {
    int64_t start, length, offset, depth;
    bool data, zero, present, has_offset;
    const char *filename;   /* node holding the data; NULL if unknown */
} MapEntry;

/*
 * The entry starting at offset: ask the top node and, while a node
 * neither holds data nor reads as zeroes there, its backing file.
 */
static int get_block_status(BlockNode *bs, int64_t offset, int64_t bytes,
                            MapEntry *e)
{
    BlockNode *file = NULL;
    int64_t map = 0;
    int depth = 0;
    int ret;

    for (;;) {
        bs = node_skip_filters(bs);
        ret = node_block_status(bs, true, offset, bytes, &bytes, &map, &file);
        if (ret < 0) {
            return ret;
        }
        if (bytes == 0) {
            /* Only a broken chain answers nothing before its end. */
            return -EIO;
        }
        if (ret & (BLOCK_ZERO | BLOCK_DATA)) {
            break;
        }
        bs = node_backing(bs);
        if (!bs) {
            /* Nobody in the chain says anything about it. */
            ret = 0;
            break;
        }
        depth++;
    }

    *e = (MapEntry) {
        .start = offset,
        .length = bytes,
        .data = !!(ret & BLOCK_DATA),
        .zero = !!(ret & BLOCK_ZERO),
        .present = !!(ret & BLOCK_ALLOCATED),
        .has_offset = !!(ret & BLOCK_OFFSET_VALID),
        .offset = map,
        .depth = depth,
        .filename = (file && (ret & BLOCK_OFFSET_VALID))
                    ? node_get_filename(file) : NULL,
    };
    return 0;
}

static bool entry_mergeable(const MapEntry *curr, const MapEntry *next)
{
    if (curr->length == 0) {
        return false;
    }
    if (curr->zero != next->zero || curr->data != next->data ||
        curr->depth != next->depth || curr->present != next->present ||
        !curr->filename != !next->filename ||
        curr->has_offset != next->has_offset) {
        return false;
    }
    if (curr->filename && strcmp(curr->filename, next->filename)) {
        return false;
    }
    if (curr->has_offset && curr->offset + curr->length != next->offset) {
        return false;
    }
    return true;
}

/* Print e; next (the entry after it, NULL for the last) may be adjusted. */
static int dump_map_entry(bool json, const MapEntry *e, MapEntry *next)
{
    if (!json) {
        if (e->data && !e->has_offset) {
            tool_error("File contains external, encrypted or compressed "
                       "clusters.");
            return -1;
        }
        if (e->data && !e->zero) {
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                   (uint64_t)e->start, (uint64_t)e->length,
                   e->has_offset ? (uint64_t)e->offset : 0,
                   e->filename ? e->filename : "");
        }
        /* Zeroes and holes look the same here: let them merge. */
        if (next && (!next->data || next->zero)) {
            next->data = false;
            next->zero = true;
        }
        return 0;
    }

    printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ", \"depth\": %"
           PRId64 ", \"present\": %s, \"zero\": %s, \"data\": %s",
           e->start, e->length, e->depth, e->present ? "true" : "false",
           e->zero ? "true" : "false", e->data ? "true" : "false");
    if (e->has_offset) {
        printf(", \"offset\": %" PRId64, e->offset);
    }
    putchar('}');
    if (next) {
        puts(",");
    }
    return 0;
}

int img_map(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "format", required_argument, NULL, 'f' },
        { "output", required_argument, NULL, OPTION_OUTPUT },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "start-offset", required_argument, NULL, 's' },
        { "max-length", required_argument, NULL, 'l' },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *output = NULL, *filename;
    int64_t start_offset = 0, max_length = -1, length;
    MapEntry curr = { .length = 0 }, next;
    BlockBackend *blk;
    BlockNode *bs;
    bool json = false;
    int c, ret = 0;

    while ((c = img_getopt(argc, argv, ":f:s:l:hU", long_options)) != -1) {
        switch (c) {
        case OPTION_OUTPUT:
            output = optarg;
            break;
        case 's':
            start_offset = img_cvtnum("start offset", optarg);
            if (start_offset < 0) {
                return 1;
            }
            break;
        case 'l':
            max_length = img_cvtnum("max length", optarg);
            if (max_length < 0) {
                return 1;
            }
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    filename = argv[optind];

    if (!img_output_format(output, &json)) {
        return 1;
    }

    blk = img_open(filename, &spec);
    if (!blk) {
        return 1;
    }
    bs = blk_node(blk);

    if (json) {
        putchar('[');
    } else {
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    }

    length = blk_getlength(blk);
    if (length < 0) {
        tool_error("Failed to get size for '%s'", filename);
        blk_unref(blk);
        return 1;
    }
    if (max_length != -1) {
        /* qemu-img's sum wraps (both are at most INT64_MAX): keep that. */
        int64_t end = (int64_t)((uint64_t)start_offset + (uint64_t)max_length);
        length = MIN(end, length);
    }

    curr.start = start_offset;
    while (curr.start + curr.length < length) {
        int64_t offset = curr.start + curr.length;

        ret = get_block_status(bs, offset, length - offset, &next);
        if (ret < 0) {
            tool_error("Could not read file metadata: %s", strerror(-ret));
            goto out;
        }
        if (entry_mergeable(&curr, &next)) {
            curr.length += next.length;
            continue;
        }
        if (curr.length > 0) {
            ret = dump_map_entry(json, &curr, &next);
            if (ret < 0) {
                goto out;
            }
        }
        curr = next;
    }

    ret = dump_map_entry(json, &curr, NULL);
    if (json) {
        puts("]");
    }

out:
    blk_unref(blk);
    return ret < 0;
}
