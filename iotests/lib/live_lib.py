"""Helpers of the migrate-live-* iotests: a QMP connection to
strata-daemon that keeps events (so that a test can wait for
MIGRATION_PASS and pre-switchover while the vmm.py guest writes), and the
checks of a live save's file."""

import os
import time

import iotests as t
import mapped_ram
import qmp
import vmm

MiB = 1 << 20


class Conn:
    """A negotiated QMP client whose events are kept in order."""

    def __init__(self, daemon):
        self.c = daemon.negotiated()
        self.events = []

    def cmd(self, name, fds=(), **args):
        self.c.send(name, {k.replace('_', '-'): v for k, v in args.items()}
                    if args else None, fds=fds)
        while True:
            msg = self.c.recv()
            if msg is None:
                raise EOFError('monitor closed')
            if 'event' in msg:
                self.events.append(msg)
            else:
                return msg

    def ok(self, name, **args):
        r = self.cmd(name, **args)
        if 'error' in r:
            raise RuntimeError('%s: %s' % (name, r['error']['desc']))
        return r['return']

    def wait_event(self, pred, timeout=t.TIMEOUT):
        """The first kept event pred accepts (read more until there is
        one); it and those before it stay kept."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for e in self.events[seen:]:
                if pred(e):
                    return e
            seen = len(self.events)
            if time.monotonic() > deadline:
                raise TimeoutError('event not seen')
            msg = self.c.recv()
            if msg is None:
                raise EOFError('monitor closed')
            self.events.append(msg)

    def wait_status(self, *statuses):
        return self.wait_event(lambda e: e['event'] == 'MIGRATION' and
                               e['data']['status'] in statuses)

    def wait_pass(self, n):
        return self.wait_event(lambda e: e['event'] == 'MIGRATION_PASS' and
                               e['data']['pass'] >= n)

    def statuses(self):
        return [e['data']['status'] for e in self.events
                if e['event'] == 'MIGRATION']

    def passes(self):
        return [e['data']['pass'] for e in self.events
                if e['event'] == 'MIGRATION_PASS']


def caps(conn, **states):
    conn.ok('migrate-set-capabilities', capabilities=[
        {'capability': k.replace('_', '-'), 'state': v}
        for k, v in states.items()])


def hand_over_untracked(block, client):
    """A backend without a dirty log (the daemon cannot see its writes)."""
    ram_set = block.add_fd(client, block.fd, 'vmm-ram:' + block.id)
    client.send('object-add', block.object_add_args(ram_set))
    r = vmm.reply(client)
    client.send('remove-fd', {'fdset-id': ram_set})
    vmm.reply(client)
    return r


def restore(blocks, path):
    """migrate-incoming of path into a new daemon whose backends (new
    memfds, filled with other bytes first) have the ids and sizes of
    blocks; returns {id: memory after the restore} and the final status."""
    d = qmp.Daemon()
    conn = Conn(d)
    mon = vmm.Monitor()
    fresh = []
    for b in blocks:
        nb = mon.add_block(b.id, b.size, dirty_log=False)
        nb.fill(seed=99)
        hand_over_untracked(nb, conn.c)
        fresh.append(nb)
    caps(conn, mapped_ram=True, events=True)
    conn.ok('migrate-incoming', uri='file:' + path)
    status = conn.wait_status('completed', 'failed')['data']['status']
    out = {nb.id: nb.snapshot() for nb in fresh}
    if status != 'completed':
        out['error'] = conn.ok('query-migrate').get('error-desc')
    conn.cmd('quit')
    d.proc.wait(t.TIMEOUT)
    mon.close()
    return out, status


def file_problems(path, expected):
    """Checks of a finished file against the RAM at the pause: the
    bitmap says exactly which pages are non-zero, every stored page holds
    the paused guest's bytes, and no page with a clear bit holds anything
    but zeros (old data of a page that became zero is gone)."""
    f = mapped_ram.parse(path)
    bad = []
    for b in f.blocks:
        mem = expected[b.id]
        for i in range(b.pages()):
            page = mem[i * vmm.PAGE:(i + 1) * vmm.PAGE]
            nonzero = page != bytes(vmm.PAGE)
            off = b.pages_offset + i * vmm.PAGE
            raw = f.data[off:off + vmm.PAGE]
            if b.stored(i) != nonzero:
                bad.append('%s page %d: bit %d, page %s' % (
                    b.id, i, b.stored(i), 'data' if nonzero else 'zero'))
            elif nonzero and raw != page:
                bad.append('%s page %d: stored bytes differ' % (b.id, i))
            elif not nonzero and raw.strip(b'\0'):
                bad.append('%s page %d: clear bit over old bytes' % (b.id, i))
            if len(bad) > 5:
                return bad
    return bad


def tmp_leftovers(path):
    d, base = os.path.split(path)
    return sorted(n for n in os.listdir(d)
                  if n.startswith(base + '.strata-'))
