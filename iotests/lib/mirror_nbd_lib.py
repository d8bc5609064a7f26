"""Storage moving between hosts (the qmp-mirror-nbd-* tests): a mirror on
one daemon whose target is a driver=nbd node connected to a writable NBD
export of a second daemon, while a guest writes through an NBD export of
the source on the first.

Each scenario runs for three pairs: the daemon under test as source and
qemu-storage-daemon 7.2 as destination, the reverse, and the daemon under
test at both ends.  In oracle mode (./check --regen) the daemon under test
is qsd itself, so the goldens are qsd to qsd.  Only the source's QMP
traffic is logged; the destination is started from its command line.
"""
import os
import random
import shutil
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import qmp  # noqa: E402
import mirror_lib as m  # noqa: E402

SIZE = 8 << 20

# (label, source is the daemon under test, destination is)
PAIRS = [('daemon under test -> qemu-storage-daemon', True, False),
         ('qemu-storage-daemon -> daemon under test', False, True),
         ('daemon under test -> daemon under test', True, True)]


def requires():
    qmp.requires_daemon()
    if not t._find(t.QSD_PROG):
        t.skip('qemu-storage-daemon not found')


def daemon(under_test, args):
    """A daemon: the one under test, or qsd 7.2 whatever the mode."""
    if under_test:
        return qmp.Daemon(args)
    real = qmp.daemon_prog
    qmp.daemon_prog = lambda system=False: t.QSD_PROG
    try:
        return qmp.Daemon(args)
    finally:
        qmp.daemon_prog = real


def writes(seed, n):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        off = rnd.randrange(0, SIZE // 4096) * 4096
        length = min(rnd.choice([4096, 65536, 200704]), SIZE - off)
        if rnd.randrange(4) == 0:
            out.append('write -z %d %d' % (off, length))
        else:
            out.append('write -P %d %d %d' % (rnd.randrange(1, 255), off,
                                               length))
    return out


def uri(sock, export):
    return 'nbd+unix:///%s?socket=%s' % (export, sock)


def guest(sock, cmds):
    """The guest's writes through the source's export; failures logged."""
    r = t.run_qemu_io(['-f', 'raw'] + t.cmd_args(cmds) + [uri(sock, 'disk')])
    bad = [ln for ln in r.out.split('\n')
           if ln and not ln.startswith('wrote') and ' ops; ' not in ln]
    t.log('guest: %d writes%s' % (len(cmds), ', exit %d' % r.rc
                                 if r.rc else ''))
    for ln in bad:
        t.log(ln)


def fresh(path):
    if os.path.exists(path):
        os.unlink(path)
    return path


def move(n, label, src_under_test, dst_under_test, start_mirror):
    """One move: start_mirror(client, dst_sock, strata) sends the command
    that starts job m0 onto the destination's export 'tgt' (strata: the
    source is strata-daemon, which may be given its own options)."""
    t.section('%s (%s)' % (label, n))
    src = m.qcow2('src%d.qcow2' % n, SIZE, ['write -P 0x11 0 3M',
                                            'write -P 0x22 5M 2M'])
    tgt = m.qcow2('tgt%d.qcow2' % n, SIZE)
    model = t.test_path('model%d.qcow2' % n)
    shutil.copyfile(src, model)
    dst_sock = fresh(t.test_path('dst%d.sock' % n))
    src_sock = fresh(t.test_path('src%d.sock' % n))
    dst = daemon(dst_under_test, m.blockdev('tgt', tgt) + [
        '--nbd-server', 'addr.type=unix,addr.path=%s' % dst_sock,
        '--export', 'type=nbd,id=e0,node-name=tgt,name=tgt,writable=on'])
    d = daemon(src_under_test, m.blockdev('src', src) + [
        '--nbd-server', 'addr.type=unix,addr.path=%s' % src_sock,
        '--export', 'type=nbd,id=e0,node-name=src,name=disk,writable=on'])
    c = d.client()
    c.log_greeting()
    c.negotiate()
    before = writes(2 * n, 40)
    after = writes(2 * n + 1, 40)
    start_mirror(c, dst_sock, src_under_test and not t.oracle_mode())
    guest(src_sock, before)
    # the job may be ready by now (or not): reply first, then the events
    m.cmd(c, 'block-job-set-speed', {'device': 'm0', 'speed': 0},
          until_pred=m.is_event('BLOCK_JOB_READY', 'm0'), progress=False,
          reply_first=True)
    guest(src_sock, after)
    m.cmd(c, 'block-job-complete', {'device': 'm0'},
          until_pred=m.is_status('m0', 'null'), progress=False)
    # after the switch, the source's export writes to the destination
    guest(src_sock, ['write -P 0x77 7M 64k'])
    c.close()
    t.log('source:')
    d.stop()
    t.log('destination:')
    dst.stop()
    r = t.run_qemu_io(['-f', 'qcow2'] +
                      t.cmd_args(before + after + ['write -P 0x77 7M 64k']) +
                      [model])
    if r.rc:
        r.log()
    m.compare(model, tgt)
    m.check(tgt)
    m.check(src)
