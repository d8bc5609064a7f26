"""Build a qcow2 image holding many persistent dirty bitmaps, directly.

Adding 65535 bitmaps one by one over QMP takes QEMU about an hour (each
add walks every bitmap), so tests of the per-image limits write the image
themselves.  Written from the qcow2 specification (version 3 header, the
bitmaps header extension, bitmap directory entries, bitmap tables,
refcounts), not from either implementation, so that both judge the same
file; the result is a valid image (`qemu-img check` finds nothing), not a
damaged one.

Layout, in clusters: the header (with the bitmaps extension), the refcount
table, the refcount blocks, the L1 table (all unallocated: the disk reads
as zeroes), one bitmap table per bitmap, then the bitmap directory.  Every
one of those clusters has refcount 1 and nothing else is allocated.  The
bitmap tables are left as holes in a sparse file: an all-zero table entry
means "this cluster of the bitmap reads as zeroes", so every bitmap is
empty unless ones=True (each entry then says "all ones").
"""
import struct

BITMAPS_EXT = 0x23852875
AUTOCLEAR_BITMAPS = 1
IN_USE, AUTO = 1, 2
DIR_ENTRY_HEADER = 24
HEADER_LENGTH = 112        # v3 header with the compression type, padded
REFCOUNT_ORDER = 4         # 16-bit refcounts


def _div_up(a, b):
    return (a + b - 1) // b


def entry_size(name_size, extra_size=0):
    """Bytes of one directory entry: header, extra data, name, padding."""
    return (DIR_ENTRY_HEADER + extra_size + name_size + 7) & ~7


def default_names(n):
    return ['b%05d' % i for i in range(n)]


def build(path, names, size=1 << 20, cluster_bits=16, granularity_bits=16,
          flags=AUTO, ones=False, nb_bitmaps=None):
    """Write a qcow2 v3 image of `size` bytes whose bitmaps extension lists
    one bitmap per name (str or bytes), in that order, each with the given
    granularity and directory flags.  nb_bitmaps overrides the count the
    header extension states (a file beyond QEMU's limit says 65536 and
    holds as many).  Returns a dict of where things are, for tests."""
    cs = 1 << cluster_bits
    names = [n.encode() if isinstance(n, str) else n for n in names]
    bitmap_bytes = _div_up(_div_up(size, 1 << granularity_bits), 8)
    table_size = max(_div_up(bitmap_bytes, cs), 1)
    table_clusters = _div_up(table_size * 8, cs)
    dir_size = sum(entry_size(len(n)) for n in names)
    dir_clusters = _div_up(dir_size, cs)
    l1_size = max(_div_up(size, cs * (cs // 8)), 1)
    l1_clusters = _div_up(l1_size * 8, cs)

    # The refcount structures must count themselves: grow until stable.
    fixed = 1 + l1_clusters + len(names) * table_clusters + dir_clusters
    per_block = cs * 8 // (1 << REFCOUNT_ORDER)
    rb, rt = 0, 1
    while True:
        total = fixed + rt + rb
        new_rb = _div_up(total, per_block)
        new_rt = _div_up(new_rb * 8, cs)
        if (new_rb, new_rt) == (rb, rt):
            break
        rb, rt = new_rb, new_rt

    rt_off = 1 * cs
    rb_off = rt_off + rt * cs
    l1_off = rb_off + rb * cs
    tables_off = l1_off + l1_clusters * cs
    dir_off = tables_off + len(names) * table_clusters * cs
    total = dir_off // cs + dir_clusters

    directory = bytearray()
    for i, name in enumerate(names):
        directory += struct.pack('>QIIBBHI',
                                 tables_off + i * table_clusters * cs,
                                 table_size, flags, 1, granularity_bits,
                                 len(name), 0)
        directory += name
        directory += bytes(entry_size(len(name)) - DIR_ENTRY_HEADER -
                           len(name))

    ext = struct.pack('>IIQQ',
                      len(names) if nb_bitmaps is None else nb_bitmaps, 0,
                      dir_size, dir_off)
    header = struct.pack('>4sIQIIQIIQQIIQQQQII',
                         b'QFI\xfb', 3,
                         0, 0,                     # no backing file
                         cluster_bits, size,
                         0,                        # no encryption
                         l1_size, l1_off,
                         rt_off, rt,
                         0, 0,                     # no snapshots
                         0, 0,                     # incompatible, compatible
                         AUTOCLEAR_BITMAPS,        # the bitmaps are valid
                         REFCOUNT_ORDER, HEADER_LENGTH)
    header += bytes(HEADER_LENGTH - len(header))   # compression type zlib
    header += struct.pack('>II', BITMAPS_EXT, len(ext)) + ext
    header += struct.pack('>II', 0, 0)             # end of extensions
    assert len(header) <= cs

    with open(path, 'wb') as f:
        f.truncate(total * cs)
        f.write(header)
        f.seek(rt_off)
        f.write(b''.join(struct.pack('>Q', rb_off + i * cs)
                         for i in range(rb)))
        f.seek(rb_off)
        f.write(struct.pack('>H', 1) * total)
        if ones:
            # Entry with offset 0 and bit 0 set: the cluster reads as ones.
            one = struct.pack('>Q', 1) * table_size
            for i in range(len(names)):
                f.seek(tables_off + i * table_clusters * cs)
                f.write(one)
        f.seek(dir_off)
        f.write(directory)
    return {'cluster_size': cs, 'directory_offset': dir_off,
            'directory_size': dir_size, 'file_clusters': total}
