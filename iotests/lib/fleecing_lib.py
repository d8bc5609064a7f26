"""The QEMU 7.2 fleecing recipe (qmp-fleecing-*), driven the same way
against both daemons.

style 'export': the fleecing target is a qcow2 overlay whose backing file
is the source, and the guest's writable NBD export moves from the source
to the copy-before-write filter at the freeze point (delete, add: what
qemu-storage-daemon 7.2 offers instead of a device's drive property).
style 'reopen': the fleecing target is a preallocated raw scratch file,
the guest writes through a raw node `disk` over the source, and
blockdev-reopen puts the filter in between and takes it out again.
(qsd 7.2 aborts in bdrv_parent_drained_end_single_no_poll when the
filter is taken out by blockdev-reopen while the target is an overlay of
the source, so each target kind goes with the step qsd survives.)
"""
import json
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import nbd_export as n  # noqa: E402
import filters  # noqa: E402
import qmp  # noqa: E402
from export_del import export_del  # noqa: E402

K = 1024
MiB = 1 << 20


def model_write(model, off, length, byte):
    model[off:off + length] = bytes([byte]) * length


def run(style):
    qmp.requires_daemon()
    n.requires_server('nbdinfo', 'qemu-io', 'qemu-img')
    global nbd
    nbd = n.import_libnbd()
    src = t.test_path('src.qcow2')
    fl = t.test_path('fleece.' + ('qcow2' if style == 'export' else 'raw'))
    t.qemu_img(['create', '-q', '-f', 'qcow2', src, '1M'])
    t.run_io(['-f', 'qcow2', '-c', 'write -P 0x11 0 768k', src],
             prog='qemu')
    if style == 'export':
        t.qemu_img(['create', '-q', '-f', 'qcow2', '-b', src, '-F', 'qcow2',
                    fl, '1M'])
        target = {'driver': 'qcow2', 'node-name': 'fl-tgt',
                  'file': {'driver': 'file', 'filename': fl},
                  'backing': 'src'}
        guest_node = 'src'
    else:
        t.qemu_img(['create', '-q', '-f', 'raw', '-o', 'preallocation=full',
                    fl, '1M'])
        target = {'driver': 'raw', 'node-name': 'fl-tgt',
                  'file': {'driver': 'file', 'filename': fl}}
        guest_node = 'disk'
    sock = t.test_path('nbd.sock')

    d = qmp.Daemon(['--blockdev', 'driver=file,node-name=src-file,'
                    'filename=%s' % src,
                    '--blockdev', 'driver=qcow2,node-name=src,file=src-file',
                    '--blockdev', 'driver=raw,node-name=disk,file=src',
                    '--nbd-server', 'addr.type=unix,addr.path=%s' % sock])
    c = d.negotiated()

    def uri(name):
        return 'nbd+unix:///%s?socket=%s' % (name, sock)

    def guest(cmds):
        t.run_io(['-f', 'raw'] + t.cmd_args(cmds) + [uri(guest_node)],
                 prog='qemu').log()

    t.section('the guest writes; a bitmap records it since the last backup')
    c.cmd('block-export-add', {'type': 'nbd', 'id': 'guest',
                               'node-name': guest_node, 'writable': True})
    c.cmd('block-dirty-bitmap-add', {'node': 'src', 'name': 'b0',
                                     'granularity': 65536})
    model = bytearray(b'\x11' * (768 * K) + b'\0' * (256 * K))
    with open(t.test_path('full.raw'), 'wb') as f:
        f.write(model)      # the last backup, when b0 was started
    for off, length, byte in ((128 * K, 64 * K, 0x22),
                              (520 * K, 4 * K, 0x23),
                              (900 * K, 8 * K, 0x24)):
        guest('write -P 0x%x %d %d' % (byte, off, length))
        model_write(model, off, length, byte)
    with open(t.test_path('model.raw'), 'wb') as f:
        f.write(model)

    t.section('freeze: bitmaps, fleecing target, filter, snapshot-access')
    # No guest write may fall between the bitmap transaction and the
    # filter taking the guest's writes (docs/qmp.md, Fleecing): the
    # guest's export is gone meanwhile (style 'export'); style 'reopen'
    # relies on the guest not writing.
    if style == 'export':
        export_del(c, 'guest')
    c.cmd('transaction', {'actions': [
        {'type': 'block-dirty-bitmap-disable',
         'data': {'node': 'src', 'name': 'b0'}},
        {'type': 'block-dirty-bitmap-add',
         'data': {'node': 'src', 'name': 'b1', 'granularity': 65536}}]})
    c.cmd('blockdev-add', target)
    c.cmd('blockdev-add', {'driver': 'copy-before-write',
                           'node-name': 'fl-cbw', 'file': 'src',
                           'target': 'fl-tgt'})
    if style == 'export':
        guest_node = 'fl-cbw'
        c.cmd('block-export-add', {'type': 'nbd', 'id': 'guest',
                                   'node-name': 'fl-cbw', 'writable': True})
    else:
        c.cmd('blockdev-reopen', {'options': [{
            'driver': 'raw', 'node-name': 'disk', 'file': 'fl-cbw'}]})
    c.cmd('blockdev-add', {'driver': 'snapshot-access',
                           'node-name': 'fl-access', 'file': 'fl-cbw'})
    c.cmd('block-export-add', {'type': 'nbd', 'id': 'fleece',
                               'name': 'fleece', 'node-name': 'fl-access',
                               'bitmaps': [{'node': 'src', 'name': 'b0'}]})

    c.send('query-named-block-nodes', {'flat': True})
    for node in json.loads(c.recv_text())['return']:
        if node['node-name'] == 'fl-access':
            t.log(node, [filters.filter_disk_size])

    t.section('the guest writes during fleecing')
    for off, length, byte in ((0, 4 * K, 0x31), (132 * K, 8 * K, 0x32),
                              (800 * K, 64 * K, 0x33)):
        guest('write -P 0x%x %d %d' % (byte, off, length))

    t.section('the backup client reads the frozen view')
    # base:allocation one cluster at a time: qsd 7.2 answers a range that
    # runs from a cluster the guest has not written into one it has with
    # the source's status for both (docs/qmp.md, Fleecing); strata answers
    # with the view's, which is what qsd says of the cluster alone.
    h = nbd.NBD()
    h.add_meta_context('base:allocation')
    h.connect_uri(uri('fleece'))
    extents = []
    for off in range(0, MiB, 65536):
        h.block_status(65536, off, lambda ctx, o, e, err:
                       extents.append((o, e[:2])) or 0,
                       flags=nbd.CMD_FLAG_REQ_ONE)
    h.shutdown()
    t.log('base:allocation by cluster: ' + ' '.join(
        '%d:%d/%d' % (o // 65536, e[1], e[0] // 1024) for o, e in extents))
    t.run(['nbdinfo', '--map=qemu:dirty-bitmap:b0', uri('fleece')]).log()
    t.run_io(['-r', '-f', 'raw', '-c', 'read -P 0x11 0 64k',
              '-c', 'read -P 0x22 128k 64k', '-c', 'read -P 0x0 800k 64k',
              '-c', 'read -P 0x24 900k 8k', uri('fleece')],
             prog='qemu').log()
    t.qemu_img(['convert', '-f', 'raw', '-O', 'raw', uri('fleece'),
                t.test_path('view.raw')]).log()
    t.qemu_img(['compare', '-f', 'raw', '-F', 'raw',
                t.test_path('model.raw'), t.test_path('view.raw')]).log()
    t.log('incremental: the dirty extents of b0 applied to the last '
          'backup give the view')
    h = nbd.NBD()
    h.add_meta_context('qemu:dirty-bitmap:b0')
    h.connect_uri(uri('fleece'))
    dirty = []
    off = 0
    while off < MiB:
        ext = []
        h.block_status(MiB - off, off, lambda ctx, o, e, err:
                       ext.extend(e) or 0)
        for i in range(0, len(ext), 2):
            if ext[i + 1] & 1:
                dirty.append((off, ext[i]))
            off += ext[i]
    with open(t.test_path('full.raw'), 'r+b') as f:
        for o, length in dirty:
            f.seek(o)
            f.write(h.pread(length, o))
    h.shutdown()
    t.log('copied: ' + ', '.join('%dk+%dk' % (o // K, length // K)
                                 for o, length in dirty))
    t.qemu_img(['compare', '-f', 'raw', '-F', 'raw',
                t.test_path('model.raw'), t.test_path('full.raw')]).log()
    t.log('writes to the view are refused:')
    t.run_io(['-f', 'raw', '-c', 'write 0 4k', uri('fleece')],
             prog='qemu').log()

    t.section('the guest sees its own writes')
    t.run_io(['-r', '-f', 'raw', '-c', 'read -P 0x31 0 4k',
              '-c', 'read -P 0x32 132k 8k', '-c', 'read -P 0x33 800k 64k',
              uri(guest_node)], prog='qemu').log()

    t.section('teardown in reverse order')
    export_del(c, 'fleece')
    c.cmd('blockdev-del', {'node-name': 'fl-access'})
    export_del(c, 'guest')
    if style == 'reopen':
        c.cmd('blockdev-reopen', {'options': [{
            'driver': 'raw', 'node-name': 'disk', 'file': 'src'}]})
    c.cmd('blockdev-del', {'node-name': 'fl-cbw'})
    c.cmd('blockdev-del', {'node-name': 'fl-tgt'})
    c.cmd('block-dirty-bitmap-remove', {'node': 'src', 'name': 'b0'})
    c.send('query-named-block-nodes', {'flat': True})
    for node in json.loads(c.recv_text())['return']:
        t.log('%s (%s): %s' % (node['node-name'], node['drv'], ', '.join(
            '%s count %d' % (b['name'], b['count'])
            for b in node.get('dirty-bitmaps', []) if 'name' in b)))
    c.cmd('quit')
    d.wait()

    t.section('the target holds the old data of the clusters written')
    if style == 'export':
        t.qemu_img(['map', '--output=json', '-f', 'qcow2', fl]).log()
    fmt = 'qcow2' if style == 'export' else 'raw'
    t.run_io(['-r', '-f', fmt, '-c', 'read -P 0x11 0 64k',
              '-c', 'read -P 0x22 128k 64k', '-c', 'read -P 0 800k 64k',
              fl], prog='qemu').log()
