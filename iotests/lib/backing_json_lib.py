"""The backing file name a block job writes into an overlay when the new
backing node's own backing was given in place of the one its header
names (qmp-commit-backing-json, qmp-stream-backing-json).

The chain is bb <- base <- mid <- top (qcow2), one node per image.  What
varies is how base's backing is set up: its header names bb by a
relative or an absolute name, and the node gets bb by reference
(backing=bb), from its header (no backing option), as null, or a node
of another image than the header names.  QEMU 7.2 calls base's backing
overridden when that node's filename is not the name expected for it
(the header's name as written, or the filename of the node opened from
it); base's filename is then a json: name with its full options, and
that is what the job writes into the overlay.

Logged: base's and top's file and backing_file in query-named-block-nodes
before and after the job, how the job ended, and after the daemon has
gone the backing file name qemu-img 7.2 reads from top's header and
whether the chain it opens from there reads what the guest saw before
the job (it does not where base's backing in the daemon was not bb:
null, or another image)."""
import json
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import qmp  # noqa: E402
from commit_lib import recv_reply  # noqa: E402,F401

D = t.TEST_DIR
IMAGES = ('bb', 'other', 'base', 'mid', 'top')
MODEL = os.path.join(D, 'model.raw')


def path(name):
    return os.path.join(D, name + '.qcow2')


def make_chain(base_header):
    """bb <- base <- mid <- top, base's header naming bb by 'a relative'
    or 'an absolute' name (base_header), the others by absolute names.
    Each image holds a range of its own, so that the copy has data to
    move."""
    for name in IMAGES:
        if os.path.exists(path(name)):
            os.unlink(path(name))
    t.qemu_img(['create', '-q', '-f', 'qcow2', path('bb'), '1M'])
    t.qemu_img(['create', '-q', '-f', 'qcow2', path('other'), '1M'])
    bb_name = 'bb.qcow2' if base_header == 'a relative' else path('bb')
    t.qemu_img(['create', '-q', '-f', 'qcow2', '-b', bb_name, '-F', 'qcow2',
                path('base'), '1M'])
    for name, below in (('mid', 'base'), ('top', 'mid')):
        t.qemu_img(['create', '-q', '-f', 'qcow2', '-b', path(below),
                    '-F', 'qcow2', path(name), '1M'])
    for i, name in enumerate(('bb', 'base', 'mid', 'top')):
        t.run_qemu_io(['-c', 'write -P %d %dk 64k' % (i + 1, i * 128),
                       path(name)])
    t.qemu_img(['convert', '-O', 'raw', path('top'), MODEL])


_HEADER = object()


def node(name, backing=_HEADER):
    """A qcow2 node; backing None is JSON null (no backing file)."""
    n = {'driver': 'qcow2', 'node-name': name,
         'file': {'driver': 'file', 'filename': path(name)}}
    if backing is not _HEADER:
        n['backing'] = backing
    return n


# how base gets its backing: base's blockdev and the nodes it needs
BASE_BACKING = {
    'ref': [node('bb'), node('base', 'bb')],
    'header': [node('base')],
    'null': [node('base', None)],
    'other': [node('other'), node('base', 'other')],
}


def blockdev_args(base_backing):
    nodes = BASE_BACKING[base_backing] + [node('mid', 'base'),
                                          node('top', 'mid')]
    args = []
    for n in nodes:
        args += ['--blockdev', json.dumps(n)]
    return args


def log_names(c, when):
    c.send('query-named-block-nodes')
    for n in recv_reply(c)['return']:
        if n['node-name'] in ('base', 'top'):
            t.log('%s: %s file %s' % (when, n['node-name'], n['file']))
            t.log('%s: %s backing_file %s'
                  % (when, n['node-name'], n.get('backing_file')))


def run_job(c, cmd, args):
    """Start the job; complete it when it is ready (an active commit);
    log its reply and how it ended."""
    t.log('%s %s' % (cmd, json.dumps(args, sort_keys=True)))
    c.send(cmd, args)
    while True:
        msg = c.recv()
        if msg is None:
            t.log('<EOF>')
            return
        if 'event' not in msg:
            t.log(json.dumps(msg))
            if 'error' in msg:
                return
        elif msg['event'] == 'BLOCK_JOB_READY':
            t.log('ready: job-complete')
            c.send('job-complete', {'id': args['job-id']})
        elif msg['event'] in ('BLOCK_JOB_COMPLETED', 'BLOCK_JOB_CANCELLED'):
            t.log('%s error: %s' % (msg['event'], msg['data'].get('error')))
        elif (msg['event'] == 'JOB_STATUS_CHANGE'
              and msg['data']['status'] == 'null'):
            return


def log_header(name):
    info = json.loads(t.qemu_img(['info', '-U', '--output=json',
                                  path(name)]).out)
    t.log('%s header: backing file %s (%s)'
          % (name, info.get('backing-filename'),
             info.get('backing-filename-format')))
    r = t.qemu_img(['compare', '-U', path(name), MODEL])
    t.log('%s\'s chain against what the guest saw before: %s'
          % (name, r.out.strip()))


def scenario(title, base_header, base_backing, cmd, args):
    t.section(title)
    make_chain(base_header)
    d = qmp.Daemon(blockdev_args(base_backing))
    c = d.negotiated()
    log_names(c, 'before')
    run_job(c, cmd, args)
    log_names(c, 'after')
    c.close()
    d.stop()
    log_header('top')
