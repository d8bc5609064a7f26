#!/usr/bin/env python3
"""Make the QEMU-compressed cluster vectors used by tests/test-qcow2-compress.c.

For each (compression type, cluster size) this writes a raw image of three
clusters filled with the pattern below, runs
    qemu-img convert -c -O qcow2 -o compression_type=T,cluster_size=C
and extracts the compressed cluster at guest cluster 1 by walking
header -> L1 -> L2 -> compressed descriptor.  The vector holds exactly the
bytes a reader fetches for that descriptor: from the host offset to the end
of its last 512-byte sector, so the stream is followed by whatever lies
there (usually the start of cluster 2's stream), as in a real image.

VERSIONS records the zlib and zstd library versions qemu-img ran with; the
test compares our compressor's output with these vectors byte for byte only
when it runs with the same versions.

Usage: make-vectors.py [OUTDIR]   (default: the directory of this script)
"""
import ctypes
import os
import struct
import subprocess
import sys
import tempfile

PATTERN_LINE = 32       # bytes per line
PATTERN_REPEAT = 512    # a line repeats until the next 512-byte boundary


def pattern(offset, length):
    """Bytes [offset, offset+length) of the test image (mirrored in C)."""
    out = bytearray()
    for i in range(offset, offset + length):
        line = b"qcow2 cluster vector %08x -\n" % (i // PATTERN_REPEAT)
        assert len(line) == PATTERN_LINE
        out.append(line[i % PATTERN_LINE])
    return bytes(out)


def extract_cluster(path, guest_cluster):
    with open(path, "rb") as f:
        img = f.read()
    (magic, version, _bfo, _bfs, cluster_bits, _size, _crypt, l1_size,
     l1_offset) = struct.unpack_from(">IIQIIQIIQ", img, 0)
    assert magic == 0x514649FB and version == 3
    cluster_size = 1 << cluster_bits
    l2_entries = cluster_size // 8
    l1_index, l2_index = divmod(guest_cluster, l2_entries)
    assert l1_index < l1_size
    (l1e,) = struct.unpack_from(">Q", img, l1_offset + 8 * l1_index)
    l2_offset = l1e & 0x00FFFFFFFFFFFE00
    (l2e,) = struct.unpack_from(">Q", img, l2_offset + 8 * l2_index)
    assert l2e & (1 << 62), "cluster is not compressed"
    csize_shift = 62 - (cluster_bits - 8)
    csize_mask = (1 << (cluster_bits - 8)) - 1
    coffset = l2e & ((1 << csize_shift) - 1)
    nb_sectors = ((l2e >> csize_shift) & csize_mask) + 1
    length = nb_sectors * 512 - (coffset & 511)
    data = img[coffset:coffset + length]
    assert len(data) == length, "descriptor points past the end of the file"
    return data


def lib_versions():
    z = ctypes.CDLL("libz.so.1")
    z.zlibVersion.restype = ctypes.c_char_p
    zs = ctypes.CDLL("libzstd.so.1")
    zs.ZSTD_versionString.restype = ctypes.c_char_p
    return z.zlibVersion().decode(), zs.ZSTD_versionString().decode()


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(
        os.path.abspath(__file__))
    qemu_version = subprocess.run(["qemu-img", "--version"], check=True,
                                  capture_output=True, text=True)
    with tempfile.TemporaryDirectory() as tmp:
        for ctype in ("zlib", "zstd"):
            for csize, name in ((512, "512"), (4096, "4k"), (65536, "64k")):
                raw = os.path.join(tmp, "src.raw")
                qcow = os.path.join(tmp, "dst.qcow2")
                with open(raw, "wb") as f:
                    f.write(pattern(0, 3 * csize))
                subprocess.run(["qemu-img", "convert", "-c", "-f", "raw",
                                "-O", "qcow2", "-o",
                                "compression_type=%s,cluster_size=%d"
                                % (ctype, csize), raw, qcow], check=True)
                data = extract_cluster(qcow, 1)
                out = os.path.join(outdir, "%s-%s.bin" % (ctype, name))
                with open(out, "wb") as f:
                    f.write(data)
                print("%s: %d bytes" % (out, len(data)))
    zver, zstdver = lib_versions()
    with open(os.path.join(outdir, "VERSIONS"), "w") as f:
        f.write("# libraries qemu-img used to write the vectors\n")
        f.write("qemu %s\n" % qemu_version.stdout.split("\n")[0])
        f.write("zlib %s\n" % zver)
        f.write("zstd %s\n" % zstdver)


if __name__ == "__main__":
    main()
