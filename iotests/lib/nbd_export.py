"""Helpers for the nbd-export-* tests: strata's NBD server against QEMU's.

serve() runs tests/nbd-serve from the build (strata's NBD server library
behind qemu-nbd's command line) or, in oracle mode (./check --regen),
qemu-nbd itself with the same arguments, so the goldens are QEMU's.
serve_qsd() and serve_daemon() run strata-daemon or, in oracle mode,
qemu-storage-daemon 7.2 with the same --blockdev/--nbd-server/--export
arguments; the nbd-export-* tests use those (serve() is left for ad-hoc
comparisons with qemu-nbd).  The clients (qemu-io, qemu-img, nbdinfo, nbdcopy,
libnbd) are the same in both modes: only the server changes.
"""

import json
import os
import re
import signal
import sys

import iotests as t

NBD_SERVE_PROG = os.environ.get('STRATA_NBD_SERVE_PROG') or os.path.join(
    t.BUILD_DIR, 'tests', 'nbd-serve')


def server_prog():
    return t.QEMU_NBD_PROG if t.oracle_mode() else NBD_SERVE_PROG


def requires_server(*clients):
    """Skip unless the server under test and the client programs
    ('qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy') are there."""
    t.requires_qemu_nbd()
    if not t._find(server_prog()):
        t.skip('%s not built' % os.path.basename(server_prog()))
    for c in clients:
        prog = {'qemu-io': t.QEMU_IO_PROG,
                'qemu-img': t.QEMU_IMG_PROG}.get(c, c)
        if not t._find(prog):
            t.skip('%s not found' % c)


def import_libnbd():
    """The libnbd Python bindings (Debian's python3-libnbd); the system
    package directory is added when another Python runs the tests."""
    try:
        import nbd
    except ImportError:
        sys.path.append('/usr/lib/python3/dist-packages')
        try:
            import nbd
        except ImportError:
            t.skip('python3-libnbd not installed')
    return nbd


class Served(t.Server):
    """The server under test.  stop() logs sanitizer reports and an
    abnormal exit, so that they show up in the diff; the reasons qemu-nbd
    gives for dropping clients are not part of the comparison."""

    def stop(self):
        out = super().stop()
        if os.environ.get('NBD_SERVE_LOG'):     # for debugging the server
            with open(os.environ['NBD_SERVE_LOG'], 'a') as f:
                f.write(out)
        for line in out.splitlines():
            if re.search(r'Sanitizer|runtime error|Assertion|assertion',
                         line):
                t.log(line)
        if self.proc.returncode not in (0, -15):
            t.log('[server exit status %d]' % self.proc.returncode)
        return out


def serve(sock, image, args=()):
    """The server under test on the unix socket SOCK (in TEST_DIR),
    persistent (-t); waits for the socket.  Killed at exit."""
    path = t.test_path(sock)
    if os.path.exists(path):
        os.unlink(path)
    return Served([server_prog(), '-t', '-k', path] + list(args) + [image],
                  lambda: os.path.exists(path))


class QsdServed:
    """A daemon exporting one image, as serve_qsd() starts it."""

    def __init__(self, daemon):
        self.daemon = daemon

    def stop(self):
        proc = self.daemon.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(t.TIMEOUT)
        out = self.daemon.output()
        for line in out.splitlines():
            if re.search(r'Sanitizer|runtime error|Assertion', line):
                t.log(line)
        if proc.returncode != 0:
            t.log('[daemon exit status %d]' % proc.returncode)


def serve_qsd(sock, image, fmt, name, writable=False, max_conn=None,
              description=None, depth=False):
    """One image exported the way qemu-storage-daemon's command line does
    it (--blockdev file + format, --nbd-server, --export type=nbd): by
    qemu-storage-daemon 7.2 in oracle mode, by strata-daemon with the same
    arguments otherwise (iotests/lib/qmp.py picks the program)."""
    import qmp
    qmp.requires_daemon()
    path = t.test_path(sock)
    if os.path.exists(path):
        os.unlink(path)
    srv = 'addr.type=unix,addr.path=%s' % path
    if max_conn is not None:
        srv += ',max-connections=%d' % max_conn
    exp = 'type=nbd,id=exp0,node-name=disk,name=%s,writable=%s' % (
        name, 'on' if writable else 'off')
    if description is not None:
        exp += ',description=%s' % description
    if depth:
        exp += ',allocation-depth=on'
    ro = '' if writable else ',read-only=on'
    d = qmp.Daemon(['--blockdev', 'driver=file,node-name=file0,filename=%s%s'
                    % (image, ro),
                    '--blockdev', 'driver=%s,node-name=disk,file=file0%s'
                    % (fmt, ro),
                    '--nbd-server', srv, '--export', exp])
    t._wait_for(lambda: os.path.exists(path), 10, 'the NBD socket')
    return QsdServed(d)


def serve_daemon(sock, image, args=()):
    """serve()'s qemu-nbd arguments (-f FMT, -x NAME, -r, -e N, -D DESC, -A,
    --discard=unmap) carried out by a daemon instead: qemu-storage-daemon
    7.2 in oracle mode, strata-daemon otherwise, with --blockdev,
    --nbd-server and --export.  The defaults are qemu-nbd's (writable, the
    export named "", one connection), so a test keeps its meaning."""
    import qmp
    qmp.requires_daemon()
    path = t.test_path(sock)
    if os.path.exists(path):
        os.unlink(path)
    fmt, name, ro, conns, desc, depth, discard = 'raw', '', False, 1, None, \
        False, None
    args = list(args)
    while args:
        a = args.pop(0)
        if a == '-f':
            fmt = args.pop(0)
        elif a == '-x':
            name = args.pop(0)
        elif a == '-r':
            ro = True
        elif a == '-e':
            conns = int(args.pop(0))
        elif a == '-D':
            desc = args.pop(0)
        elif a == '-A':
            depth = True
        elif a.startswith('--discard='):
            discard = a.split('=', 1)[1]
        else:
            raise ValueError('serve_daemon: unsupported argument %s' % a)
    opts = ',read-only=on' if ro else ''
    opts += ',discard=%s' % discard if discard else ''
    exp = {'type': 'nbd', 'id': 'exp0', 'node-name': 'disk', 'name': name,
           'writable': not ro, 'allocation-depth': depth}
    if desc is not None:
        exp['description'] = desc
    srv = 'addr.type=unix,addr.path=%s' % path
    srv += ',max-connections=%d' % conns if conns else ''
    d = qmp.Daemon(['--blockdev', 'driver=file,node-name=file0,filename=%s%s'
                    % (image, opts),
                    '--blockdev', 'driver=%s,node-name=disk,file=file0%s'
                    % (fmt, opts),
                    '--nbd-server', srv, '--export', json.dumps(exp)])
    t._wait_for(lambda: os.path.exists(path), 10, 'the NBD socket')
    return QsdServed(d)


def uri(sock, name=''):
    return 'nbd+unix:///%s?socket=%s' % (name, t.test_path(sock))
