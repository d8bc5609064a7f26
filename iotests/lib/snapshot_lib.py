"""Helpers for the snapshot and transaction iotests (qmp-snapshot-*,
qmp-transaction-*): skipping until the daemon has the commands a scenario
needs, filters for the times internal snapshots record, and a description
of images by QEMU's own tools for before/after comparisons."""

import json
import os
import re

import iotests as t
import qmp

_DATES = [
    (re.compile(r'"(date-sec|date-nsec|vm-clock-sec|vm-clock-nsec)": \d+'),
     r'"\1": N'),
    # qemu-img snapshot -l: DATE and VM CLOCK columns
    (re.compile(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d *\d+:\d\d:\d\d\.\d{3}'),
     'DATE VM-CLOCK'),
    (re.compile(r'"actual-size": \d+'), '"actual-size": SIZE'),
]


def filter_snap(text):
    for pattern, repl in _DATES:
        text = pattern.sub(repl, text)
    return text


def log(text):
    qmp.log(filter_snap(text))


def requires_commands(*names):
    """Skip unless the daemon under test has these commands."""
    qmp.requires_daemon()
    t.requires_qemu('img')
    have = qmp.daemon_commands()
    for need in names:
        if need not in have:
            t.skip('%s is not in this build' % need)


class Client:
    """A negotiated connection that logs requests and filtered replies."""

    def __init__(self, daemon):
        self.c = daemon.negotiated()

    def cmd(self, cmd, args=None, quiet=False):
        self.c.send(cmd, args)
        while True:
            text = self.c.recv_text()
            if text is None or '"event"' not in text:
                break
        if not quiet:
            log('-> %s %s' % (cmd, '' if args is None else
                              json.dumps(args, sort_keys=True)))
            log('<- %s' % text)
        return text

    def nodes(self):
        """query-named-block-nodes, as text (compared, not logged)."""
        return filter_snap(self.cmd('query-named-block-nodes', {'flat': True},
                                    quiet=True))

    def close(self):
        self.c.close()


def comparable_nodes(text):
    """query-named-block-nodes for a before/after comparison: a snapshot
    taken and deleted again leaves the image file longer (QEMU does not
    shrink it; qemu-img check still finds the image as it was), so the
    length of file nodes is left out."""
    reply = json.loads(re.sub(r'\b(N|SIZE)\b', '0', text))
    for node in reply.get('return', []):
        if node['drv'] == 'file':
            node['image'].pop('virtual-size', None)
    return json.dumps(reply, sort_keys=True)


def describe_images(paths):
    """What qemu-img 7.2 says about the images: check, internal snapshots
    and allocation map (-U: the daemon may still hold them)."""
    out = []
    for path in paths:
        name = os.path.basename(path)
        for args in (['check', '-U', path],
                     ['snapshot', '-l', '-U', path],
                     ['map', '-U', '--output=json', path]):
            r = t.qemu_img(args)
            out.append('%s %s:\n%s[rc %d]' % (args[0], name,
                                              filter_snap(r.out), r.rc))
    return '\n'.join(out)
