/*
 * strata-img rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt]
 *     [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt]
 *     filename
 *
 * qemu-img rebase: point an image at another backing file.  In safe mode
 * the guest-visible content must not change, so every range the image does
 * not allocate itself is read through the old and the new backing chain
 * and, where they differ, the old content is copied into the image before
 * the header is switched.  Unsafe mode (-u) only rewrites the header, for
 * renamed or moved backing files; the old backing file is not even opened.
 *
 * Messages, their order and the exit codes are qemu-img 7.2's, including
 * its habit of copying the data and only then refusing a missing -F.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "strata/block-ops.h"
#include "strata/opts.h"
#include "strata/units.h"
#include "strata/error.h"
#include "img.h"

#define REBASE_BUF_SIZE (2 * 1024 * 1024)
#define REBASE_SECTOR 512

/* Whether the first 512-byte run differs, and how long the run is. */
static bool compare_buffers(const uint8_t *a, const uint8_t *b, int64_t bytes,
                            int64_t *pnum)
{
    int64_t i = MIN(bytes, REBASE_SECTOR);
    bool differ = memcmp(a, b, (size_t)i) != 0;

    while (i < bytes) {
        int64_t len = MIN(bytes - i, REBASE_SECTOR);
        if ((memcmp(a + i, b + i, (size_t)len) != 0) != differ) {
            break;
        }
        i += len;
    }
    *pnum = i;
    return differ;
}

/* The image's name for the new backing file, resolved against the image. */
static char *backing_path(const char *overlay, const char *backing)
{
    const char *slash = strrchr(overlay, '/');

    if (backing[0] == '/' || !slash || strchr(backing, ':')) {
        return g_strdup(backing);
    }
    return g_strdup_printf("%.*s/%s", (int)(slash - overlay), overlay,
                           backing);
}

/* A node of bs's backing chain that is the file `path`, if any. */
static BlockNode *find_backing_image(BlockNode *bs, const char *path)
{
    char *want = realpath(path, NULL);
    BlockNode *found = NULL;

    if (!want) {
        return NULL;
    }
    for (BlockNode *n = node_backing(bs); n && !found; n = node_backing(n)) {
        char *have = realpath(node_get_filename(n), NULL);
        if (have && !strcmp(have, want)) {
            found = n;
        }
        free(have);
    }
    free(want);
    return found;
}

typedef struct RebaseCopy {
    BlockBackend *blk, *old_backing, *new_backing;
    BlockNode *unfiltered, *prefix_chain;
    int64_t old_size, new_size;
} RebaseCopy;

static int copy_differences(RebaseCopy *r, int64_t size, ImgProgress *prog)
{
    uint8_t *buf_old = g_malloc(REBASE_BUF_SIZE);
    uint8_t *buf_new = g_malloc(REBASE_BUF_SIZE);
    float local_progress = 0;
    int64_t n;
    int ret = 0;

    if (size != 0) {
        local_progress = (float)100 /
                         (float)(size / MIN(size, REBASE_BUF_SIZE));
    }
    for (int64_t offset = 0; offset < size; offset += n) {
        bool old_is_zero = false;
        int64_t pnum;
        int alloc;

        n = MIN(REBASE_BUF_SIZE, size - offset);
        alloc = node_is_allocated(r->unfiltered, offset, n, &pnum);
        if (alloc < 0) {
            tool_error("error while reading image metadata: %s",
                       g_strerror(-alloc));
            ret = alloc;
            goto out;
        }
        n = pnum;
        if (alloc) {
            continue;
        }
        if (r->prefix_chain) {
            /* Unchanged since the new backing file: nothing to do. */
            alloc = node_is_allocated_above(node_backing(r->unfiltered),
                                            r->prefix_chain, false, offset, n,
                                            &pnum);
            if (alloc < 0) {
                tool_error("error while reading image metadata: %s",
                           g_strerror(-alloc));
                ret = alloc;
                goto out;
            }
            n = pnum;
            if (!alloc) {
                continue;
            }
        }

        /* Backing files may be shorter than the image: zeroes past them. */
        if (offset >= r->old_size) {
            memset(buf_old, 0, (size_t)n);
            old_is_zero = true;
        } else {
            n = MIN(n, r->old_size - offset);
            ret = blk_pread(r->old_backing, offset, n, buf_old, 0);
            if (ret < 0) {
                tool_error("error while reading from old backing file");
                goto out;
            }
        }
        if (offset >= r->new_size || !r->new_backing) {
            memset(buf_new, 0, (size_t)n);
        } else {
            n = MIN(n, r->new_size - offset);
            ret = blk_pread(r->new_backing, offset, n, buf_new, 0);
            if (ret < 0) {
                tool_error("error while reading from new backing file");
                goto out;
            }
        }

        for (int64_t done = 0, pnum; done < n; done += pnum) {
            if (compare_buffers(buf_old + done, buf_new + done, n - done,
                                &pnum)) {
                if (old_is_zero) {
                    ret = blk_pwrite_zeroes(r->blk, offset + done, pnum, 0);
                } else {
                    ret = blk_pwrite(r->blk, offset + done, pnum,
                                     buf_old + done, 0);
                }
                if (ret < 0) {
                    tool_error("Error while writing to COW image: %s",
                               g_strerror(-ret));
                    goto out;
                }
            }
        }
        img_progress_set_bytes(prog, (uint64_t)MIN(offset + n, size),
                               (uint64_t)size);
        /* qemu-img's meter stops at 100 however many steps there are. */
        img_progress_print(prog, MIN(local_progress, 100 - prog->current),
                           100);
    }
    ret = 0;
out:
    g_free(buf_old);
    g_free(buf_new);
    return ret;
}

int img_rebase(int argc, char **argv)
{
    static const struct option long_options[] = {
        { "help", no_argument, NULL, 'h' },
        { "object", required_argument, NULL, IMG_OPTION_OBJECT },
        { "image-opts", no_argument, NULL, IMG_OPTION_IMAGE_OPTS },
        { "force-share", no_argument, NULL, 'U' },
        { "progress", required_argument, NULL, IMG_OPTION_PROGRESS },
        { NULL, 0, NULL, 0 },
    };
    ImgOpenSpec spec = { 0 };
    const char *cache = "writeback", *src_cache = "writeback";
    const char *out_baseimg = NULL, *out_basefmt = NULL, *filename;
    bool unsafe = false, progress = false, quiet = false, json = false;
    bool force_share = false, src_writethrough;
    BlockBackend *blk = NULL;
    RebaseCopy r = { 0 };
    ImgProgress prog;
    GError *err = NULL;
    int src_flags = 0, c, ret = -1;

    while ((c = img_getopt(argc, argv, ":hf:F:b:upt:T:qU",
                           long_options)) != -1) {
        switch (c) {
        case 'F':
            out_basefmt = optarg;
            break;
        case 'b':
            out_baseimg = optarg;
            break;
        case 'u':
            unsafe = true;
            break;
        case 'p':
            progress = true;
            break;
        case IMG_OPTION_PROGRESS:
            if (!img_progress_parse(optarg, &progress, &json)) {
                return EXIT_FAILURE;
            }
            break;
        case 't':
            cache = optarg;
            break;
        case 'T':
            src_cache = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'U':
            /* Only for the new backing file: the image is written. */
            force_share = true;
            break;
        default:
            img_open_option(c, optarg, &spec);
        }
    }
    if (quiet) {
        progress = false;
    }
    if (optind != argc - 1) {
        img_error_exit("Expecting one image file name");
    }
    if (!unsafe && !out_baseimg) {
        img_error_exit("Must specify backing file (-b) or use unsafe mode "
                       "(-u)");
    }
    filename = argv[optind];

    img_progress_init_mode(&prog, progress, json, "rebase", 2.0);
    img_progress_print(&prog, 0, 100);

    spec.flags = NODE_O_RDWR | (unsafe ? NODE_O_NO_BACKING : 0);
    if (tool_parse_cache_mode(cache, &spec.flags, &spec.writethrough) < 0) {
        tool_error("Invalid cache option: %s", cache);
        goto out;
    }
    if (tool_parse_cache_mode(src_cache, &src_flags, &src_writethrough) < 0) {
        tool_error("Invalid source cache option: %s", src_cache);
        goto out;
    }

    blk = img_open(filename, &spec);
    if (!blk) {
        goto out;
    }
    r.blk = blk;
    r.unfiltered = node_skip_filters(blk_node(blk));

    if (out_basefmt && !driver_find(out_basefmt)) {
        tool_error("Invalid format name: '%s'", out_basefmt);
        goto out;
    }

    if (!unsafe) {
        BlockNode *base_bs = node_backing(r.unfiltered);

        if (base_bs) {
            r.old_backing = blk_new(BLK_PERM_CONSISTENT_READ, BLK_PERM_ALL);
            if (!blk_insert_node(r.old_backing, base_bs, &err)) {
                tool_error_gerror(err, "Could not reuse old backing file "
                                  "'%s': ", node_get_filename(base_bs));
                goto out;
            }
        }
        if (out_baseimg[0]) {
            char *path = backing_path(node_get_filename(blk_node(blk)),
                                      out_baseimg);

            r.prefix_chain = find_backing_image(r.unfiltered, path);
            if (r.prefix_chain) {
                r.new_backing = blk_new(BLK_PERM_CONSISTENT_READ,
                                        BLK_PERM_ALL);
                if (!blk_insert_node(r.new_backing, r.prefix_chain, &err)) {
                    tool_error_gerror(err, "Could not reuse backing file "
                                      "'%s': ", out_baseimg);
                    g_free(path);
                    goto out;
                }
            } else {
                json_t *options = json_object();

                if (out_basefmt) {
                    json_object_set_new(options, "driver",
                                        json_string(out_basefmt));
                }
                if (force_share) {
                    json_object_set_new(options, "force-share", json_true());
                }
                r.new_backing = blk_new_open(path, options, src_flags, &err);
                if (!r.new_backing) {
                    if (node_error_is_backing_loop(err)) {
                        tool_error_gerror(err, "%s", "");
                    } else {
                        tool_error_gerror(err, "Could not open new backing "
                                          "file '%s': ", out_baseimg);
                    }
                    g_free(path);
                    goto out;
                }
            }
            g_free(path);
        }
    }

    if (!unsafe) {
        int64_t size = blk_getlength(blk);

        if (size < 0) {
            tool_error("Could not get size of '%s': %s", filename,
                       g_strerror((int)-size));
            goto out;
        }
        if (r.old_backing) {
            r.old_size = blk_getlength(r.old_backing);
            if (r.old_size < 0) {
                tool_error("Could not get size of '%s': %s",
                           node_backing_file(r.unfiltered),
                           g_strerror((int)-r.old_size));
                goto out;
            }
        }
        if (r.new_backing) {
            r.new_size = blk_getlength(r.new_backing);
            if (r.new_size < 0) {
                tool_error("Could not get size of '%s': %s", out_baseimg,
                           g_strerror((int)-r.new_size));
                goto out;
            }
        }
        if (copy_differences(&r, size, &prog) < 0) {
            goto out;
        }
    }

    if (out_baseimg && *out_baseimg) {
        ret = node_change_backing_file(r.unfiltered, out_baseimg,
                                       out_basefmt, true, NULL);
    } else {
        ret = node_change_backing_file(r.unfiltered, NULL, NULL, false, NULL);
    }
    if (ret == -ENOSPC) {
        tool_error("Could not change the backing file to '%s': No space "
                   "left in the file header", out_baseimg);
    } else if (ret == -EINVAL && out_baseimg && !out_basefmt) {
        tool_error("Could not change the backing file to '%s': backing "
                   "format must be specified", out_baseimg);
    } else if (ret < 0) {
        tool_error("Could not change the backing file to '%s': %s",
                   out_baseimg ? out_baseimg : "(null)", g_strerror(-ret));
    }
    img_progress_print(&prog, 100, 0);
out:
    img_progress_end(&prog);
    if (r.old_backing) {
        blk_unref(r.old_backing);
    }
    if (r.new_backing) {
        blk_unref(r.new_backing);
    }
    if (blk) {
        blk_unref(blk);
    }
    return ret ? EXIT_FAILURE : EXIT_SUCCESS;
}
