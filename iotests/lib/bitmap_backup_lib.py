"""Helpers for the backups with a dirty bitmap (qmp-backup-bitmap-*): a
qcow2 source whose persistent bitmaps are made offline with qemu-img
(bitmap --add) and marked by offline qemu-io writes (qemu-io records in
the enabled persistent bitmaps and stores them at close), a raw model of
the source's data, and what a backup target holds."""
import json
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import qmp  # noqa: E402

KiB = 1024
BLOCK = 4 * KiB


def make_source(img, size, bitmaps, writes, model='model.img'):
    """img: qcow2 of size, all 0x11, then the bitmaps [(name, gran)] are
    added, then writes (qemu-io commands) go to the image and the model."""
    t.run_img(['create', '-f', 'qcow2', t.test_path(img), str(size)],
              prog='qemu')
    io(img, ['write -P 0x11 0 %d' % size], 'qcow2')
    for name, gran in bitmaps:
        r = t.run_img(['bitmap', '--add', '-g', str(gran), t.test_path(img),
                       name], prog='qemu')
        if r.rc:
            r.log()
    t.create_raw(model, size, 0x11)
    write(img, model, writes)


def write(img, model, cmds):
    io(img, cmds, 'qcow2')
    io(model, cmds, 'raw')


def io(img, cmds, fmt):
    r = t.run_io(['-f', fmt] + t.cmd_args(cmds) + [t.test_path(img)],
                 prog='qemu')
    if r.rc:
        r.log()


def query_bitmaps(c, node):
    """The node's dirty-bitmaps (query-named-block-nodes), nothing logged
    but events that come meanwhile."""
    c.send('query-named-block-nodes')
    while True:
        msg = c.recv()
        if 'event' not in msg:
            break
        qmp.log(json.dumps(msg))
    for n in msg['return']:
        if n['node-name'] == node:
            return n.get('dirty-bitmaps', [])
    return None


def log_bitmaps(c, node, anon_count=False):
    """One line per bitmap of the node; an anonymous one (a job's own)
    is logged without its count unless anon_count: how far a job got
    depends on how its engine cuts chunks."""
    for b in query_bitmaps(c, node):
        b = dict(b)
        if 'name' not in b and not anon_count:
            b['count'] = 'COUNT'
        t.log('  bitmap %s' % json.dumps(b, sort_keys=True))


def copied(target, model='model.img'):
    """The 4 KiB blocks the target holds (not zero), as runs in KiB, and
    whether they hold the model's data (sources never hold zeroes)."""
    data = t.read_bytes(t.test_path(target))
    src = t.read_bytes(t.test_path(model))
    runs, same, start = [], True, None
    zero = bytes(BLOCK)
    for off in range(0, len(data) + BLOCK, BLOCK):
        blk = data[off:off + BLOCK]
        full = off < len(data) and blk != zero
        if full and blk != src[off:off + BLOCK]:
            same = False
        if full and start is None:
            start = off
        elif not full and start is not None:
            runs.append('%dK-%dK' % (start // KiB, off // KiB))
            start = None
    t.log('  target holds [%s], the source\'s data: %s'
          % (', '.join(runs), same))
