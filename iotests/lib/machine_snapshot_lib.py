"""Helpers of the machine-snapshot-* iotests: a test VM whose RAM is the
test VM monitor's (lib/vmm.py, memfds handed to strata-daemon) and whose
disks are qcow2 nodes of the daemon, exported over NBD and written through
it with qemu-io, as a VM's disk emulation would; x-strata-machine-snapshot
and -restore run as jobs to their end.

    vm = Vm(disks=2, ram=[('ram0', 4 * MiB), ('ram1', 1 * MiB)])
    vm.write(0, 'write -P 0x11 0 1M')        # through the daemon
    point = vm.capture()                     # RAM and disk copies
    vm.job('x-strata-machine-snapshot', file=..., disks=vm.snap_disks(1))
    ...
    vm.check(point)                          # RAM and disks equal it
"""

import os
import shutil
import subprocess

import iotests as t
import qmp
import vmm
from filters import filter_sanitizer_notices

MiB = 1 << 20
DISK_SIZE = 16 * MiB


def requires():
    if t.oracle_mode():
        t.skip('x-strata-machine-snapshot is a strata extension')
    qmp.requires_daemon()
    t.requires_qemu('io', 'img')


class Vm:
    """strata-daemon with qcow2 disks disk0..N-1 (nodes of the same
    names, exported over NBD under those names) and RAM blocks from a
    vmm.Monitor."""

    def __init__(self, disks=1, ram=(('ram0', 4 * MiB),), tag='',
                 daemon_args=(), preexec_fn=None):
        self.dir = t.test_path(tag) if tag else t.TEST_DIR
        os.makedirs(self.dir, exist_ok=True)
        self.nbd = os.path.join(self.dir, 'nbd.sock')
        self.images = []
        for i in range(disks):
            path = os.path.join(self.dir, 'disk%d.qcow2' % i)
            if not os.path.exists(path):
                t.qemu_img(['create', '-q', '-f', 'qcow2', path,
                            str(DISK_SIZE)])
            self.images.append(path)
        self.top = ['disk%d' % i for i in range(disks)]
        self.gen = [0] * disks
        if preexec_fn:
            self.d = _daemon_with(preexec_fn, daemon_args)
        else:
            self.d = qmp.Daemon(list(daemon_args))
        self.c = self.d.client()
        self.c.recv()
        self._negotiate()
        self.ok('nbd-server-start', {'addr': {'type': 'unix',
                                               'data': {'path': self.nbd}}})
        for i, path in enumerate(self.images):
            self.ok('blockdev-add', {'driver': 'qcow2',
                                     'node-name': 'disk%d' % i,
                                     'file': {'driver': 'file',
                                              'filename': path}})
            self.ok('block-export-add', {'type': 'nbd', 'id': 'e%d' % i,
                                         'node-name': 'disk%d' % i,
                                         'name': 'disk%d' % i,
                                         'writable': True})
        self.m = vmm.Monitor()
        self.ram = []
        for n, (rid, size) in enumerate(ram):
            b = self.m.add_block(rid, size)
            b.fill(seed=n + 1, zero_every=4)
            r = b.hand_over(self.c)
            if 'return' not in r:
                raise RuntimeError('hand_over: %s' % r)
            self.ram.append(b)

    def _negotiate(self):
        self.c.send('qmp_capabilities')
        vmm.reply(self.c)

    # ---- QMP ----

    def qmp(self, cmd, args=None):
        self.c.send(cmd, args)
        return vmm.reply(self.c)

    def ok(self, cmd, args=None):
        r = self.qmp(cmd, args)
        if 'return' not in r:
            raise RuntimeError('%s: %s' % (cmd, r))
        return r['return']

    def job(self, cmd, **args):
        """Run a machine job to its end: 'ok', the job's error, or the
        command's error ('refused: ...')."""
        args = dict((k.replace('_', '-'), v) for k, v in args.items())
        args.setdefault('job-id', 'j')
        r = self.qmp(cmd, args)
        if 'error' in r:
            return 'refused: ' + r['error']['desc']
        return self.wait_job(args['job-id'])

    def wait_job(self, job_id='j'):
        while True:
            info = [j for j in self.ok('query-jobs') if j['id'] == job_id][0]
            if info['status'] == 'concluded':
                break
            msg = self.c.recv()
            if msg is None:
                raise EOFError('daemon gone')
        self.ok('job-dismiss', {'id': job_id})
        return info.get('error', 'ok')

    # ---- the guest ----

    def uri(self, i):
        return 'nbd+unix:///disk%d?socket=%s' % (i, self.nbd)

    def write(self, i, *cmds):
        """Guest writes to disk i through the daemon's export."""
        r = t.run_io(['-f', 'raw'] + t.cmd_args(list(cmds)) + [self.uri(i)],
                     prog='qemu')
        if r.rc or 'error' in r.out.lower() or 'failed' in r.out.lower():
            raise RuntimeError('qemu-io on disk%d: %s' % (i, r.out))

    def write_all(self, seed):
        """New content in RAM and on every disk (different each seed)."""
        for n, b in enumerate(self.ram):
            b.fill(seed=seed * 10 + n, zero_every=3 + seed % 4)
        for i in range(len(self.images)):
            self.write(i, 'write -P %d %dk 256k' % (seed % 250 + 1,
                                                    (seed * 192) % 4096),
                       'write -z %dk 64k' % ((seed * 320) % 8192),
                       'write -P %d %dM 256k' % (seed % 250 + 2, seed % 12))

    def run_guest(self, seed):
        """The guest writes RAM for a while (dirty log bits set), then is
        paused by its monitor: what a snapshot must capture."""
        g = self.m.start_guest(self.ram, seed=seed)
        g.wait_rounds(5)
        g.pause()
        self.m.guest = None

    def capture(self, name):
        """RAM and disk contents now: raw copies read through the daemon."""
        point = {'ram': {b.id: b.snapshot() for b in self.ram}, 'disks': []}
        for i in range(len(self.images)):
            copy = os.path.join(self.dir, '%s-disk%d.raw' % (name, i))
            r = t.qemu_img(['convert', '-f', 'raw', '-O', 'raw',
                            self.uri(i), copy])
            if r.rc:
                raise RuntimeError(r.out)
            point['disks'].append(copy)
        return point

    def check(self, point, ram=True):
        """'RAM and disks as at the point', or what differs."""
        out = []
        for b in self.ram if ram else []:
            diff = vmm.diff_pages(point['ram'][b.id], b.snapshot())
            if diff:
                out.append('%s: %d pages differ (first %d)'
                           % (b.id, len(diff), diff[0]))
        for i, copy in enumerate(point['disks']):
            r = t.qemu_img(['compare', '-f', 'raw', '-F', 'raw', copy,
                            self.uri(i)])
            if r.rc:
                out.append('disk%d: %s' % (i, r.out.strip()))
        return '; '.join(out) or 'RAM and disks as at the point'

    # ---- the snapshot and restore arguments ----

    def snap_disks(self, gen, which=None):
        """blockdev-snapshot-sync members for every disk (or those in
        which): overlay disk<i>-<gen>.qcow2, node disk<i>-<gen>."""
        out = []
        for i in range(len(self.images)) if which is None else which:
            out.append({'node-name': self.top[i],
                        'snapshot-file': os.path.join(
                            self.dir, 'disk%d-%d.qcow2' % (i, gen)),
                        'snapshot-node-name': 'disk%d-%d' % (i, gen)})
        return out

    def snapped(self, gen, which=None):
        """After a successful snapshot: the overlays are the tops; returns
        the snapshot nodes (the old tops)."""
        old = list(self.top)
        for i in range(len(self.images)) if which is None else which:
            self.top[i] = 'disk%d-%d' % (i, gen)
        return old

    def restore_disks(self, snap_nodes, gen):
        out = []
        for i, base in enumerate(snap_nodes):
            out.append({'node-name': self.top[i], 'snapshot-node': base,
                        'overlay-file': os.path.join(
                            self.dir, 'disk%d-r%d.qcow2' % (i, gen)),
                        'overlay-node-name': 'disk%d-r%d' % (i, gen)})
        return out

    def restored(self, gen):
        for i in range(len(self.images)):
            self.top[i] = 'disk%d-r%d' % (i, gen)

    def graph(self):
        """Each export's node and its backing chain, by node name."""
        out = []
        for e in self.ok('query-block-exports'):
            out.append('%s:%s' % (e['id'], e['node-name']))
        return ' '.join(sorted(out))

    def quit(self):
        self.m.close()
        self.c.send('quit')
        try:
            vmm.reply(self.c)
        except OSError:
            pass
        self.d.proc.wait(t.TIMEOUT)
        # what the daemon said (sanitizer reports included) goes in the diff
        out = filter_sanitizer_notices(self.d.output()).strip('\n')
        if out:
            qmp.log(out)


def _daemon_with(preexec_fn, args):
    """A qmp.Daemon whose process runs preexec_fn first (limits)."""
    orig = subprocess.Popen

    def popen(*a, **kw):
        kw['preexec_fn'] = preexec_fn
        return orig(*a, **kw)
    subprocess.Popen = popen
    try:
        return qmp.Daemon(list(args))
    finally:
        subprocess.Popen = orig


def check_images(paths):
    """qemu-img check of every image: 'clean' or its complaints."""
    out = []
    for p in paths:
        r = t.qemu_img(['check', '-q', p])
        if r.rc:
            out.append('%s: %s' % (os.path.basename(p), r.out.strip()))
    return '; '.join(out) or 'all clean'


def same_file(a, b):
    with open(a, 'rb') as f, open(b, 'rb') as g:
        return f.read() == g.read()


def keep(path, name):
    """A copy of a file, to compare with later."""
    dst = path + '.' + name
    shutil.copyfile(path, dst)
    return dst
