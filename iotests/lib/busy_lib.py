"""Nodes kept busy for the op-blocker tests (qmp-*-bad-input-busy): a
daemon with qcow2 nodes src and tgt (a mirror job m0 between them, paused
by the user so that it stays where it is in both daemons), base and top
(top's backing node is base), and other; each refusal is followed by a
look at the graph, which must be as before."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import qmp  # noqa: E402
import mirror_lib as m  # noqa: E402

SIZE = 16 << 20


def images():
    m.qcow2('src.qcow2', SIZE, ['write -P 0x11 0 %d' % SIZE])
    m.qcow2('tgt.qcow2', SIZE)
    m.qcow2('base.qcow2', SIZE, ['write -P 0x22 0 1M'])
    m.qcow2('top.qcow2', SIZE, ['write -P 0x33 1M 1M'], backing='base.qcow2')
    m.qcow2('other.qcow2', SIZE)


def daemon_args():
    return (m.blockdev('src', t.test_path('src.qcow2')) +
            m.blockdev('tgt', t.test_path('tgt.qcow2')) +
            m.blockdev('base', t.test_path('base.qcow2')) +
            m.blockdev('top', t.test_path('top.qcow2'),
                       extra=',backing=base') +
            m.blockdev('other', t.test_path('other.qcow2')))


def start_held_mirror(c):
    """m0 from src to tgt, one 64 KiB chunk at a time at 1 byte/s, paused
    by the user: it uses both nodes until cancelled."""
    m.cmd(c, 'blockdev-mirror', {'job-id': 'm0', 'device': 'src',
                                 'target': 'tgt', 'sync': 'full',
                                 'speed': 1, 'buf-size': 65536},
          reply_first=True)
    m.cmd(c, 'job-pause', {'id': 'm0'},
          until_pred=m.is_status('m0', 'paused'), reply_first=True)


def cancel_held_mirror(c):
    m.cmd(c, 'job-cancel', {'id': 'm0'}, progress=False,
          until_pred=m.is_status('m0', 'null'))


class Graph:
    """Records the graph once and reports whether a command changed it."""

    def __init__(self, c):
        self.c = c
        self.before = self.now()

    def now(self):
        reply = m.quiet(self.c, 'x-debug-query-block-graph')
        g = reply['return']
        name = {n['id']: n['name'] if n['type'] == 'block-driver'
                else '%s:%s' % (n['type'], n['name']) for n in g['nodes']}
        return sorted('%s -%s-> %s' % (name[e['parent']], e['name'],
                                       name[e['child']]) for e in g['edges'])

    def refused(self, name, args):
        """Send a command that must fail; log its reply and whether the
        graph stayed as it was."""
        reply = m.cmd(self.c, name, args)
        after = self.now()
        if after != self.before:
            t.log('graph changed: %s' % ', '.join(after))
            self.before = after
        return reply


def exists(name):
    t.log('%s %s' % (name, 'exists' if os.path.exists(t.test_path(name))
                     else 'does not exist'))
