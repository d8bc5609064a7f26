"""Helpers for the block-commit tests (qmp-block-commit*): a qcow2 chain
base <- m1 <- m2 <- act with data, zeroes and holes at every level, the
daemon arguments that open it with one node name per image, a summary of
the graph, and what qemu-img 7.2 says of the images afterwards."""
import json
import os
import re
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import qmp  # noqa: E402

D = t.TEST_DIR
LAYERS = ('base', 'm1', 'm2', 'act')
# qemu-io commands per layer: each layer writes over the one below
DATA = {
    'base': ['write -P 1 0 1M', 'write -P 9 2M 512k'],
    'm1': ['write -P 2 512k 512k', 'write -z 2M 64k', 'write -P 3 3M 128k'],
    'm2': ['write -P 4 256k 64k', 'write -z 1M 128k', 'write -P 5 3M 4k',
           'write -P 6 3584k 1k'],
    'act': ['write -P 7 128k 64k', 'write -P 8 3M 64k'],
}


def path(name):
    return os.path.join(D, name + '.qcow2')


def make_chain(size='4M', layers=LAYERS, data=DATA):
    below = None
    for name in layers:
        if os.path.exists(path(name)):
            os.unlink(path(name))
        args = ['create', '-q', '-f', 'qcow2']
        if below:
            args += ['-b', path(below), '-F', 'qcow2']
        t.qemu_img(args + [path(name), size])
        cmds = data.get(name, [])
        if cmds:
            r = t.run_qemu_io(['-f', 'qcow2'] + t.cmd_args(cmds) + [path(name)])
            if r.rc:
                t.log('setup of %s failed: %s' % (name, r.out))
        below = name
    # What the guest sees before the commit: the chain, read as one image
    t.qemu_img(['convert', '-O', 'raw', path(layers[-1]),
                os.path.join(D, 'model.raw')])


def blockdev_args(layers=LAYERS, file_opts=None, read_only=()):
    """--blockdev arguments: a file and a qcow2 node per image, each
    qcow2 node naming the one below as backing (file_opts: a layer's
    file node as a JSON object instead, e.g. blkdebug)."""
    args, below = [], None
    for name in layers:
        f = (file_opts or {}).get(name) or {'driver': 'file',
                                            'filename': path(name)}
        node = {'driver': 'qcow2', 'node-name': name, 'file': f,
                'backing': below}
        if name in read_only:
            node['read-only'] = True
        args += ['--blockdev', json.dumps(node)]
        below = name
    return args


def recv_reply(c):
    while True:
        msg = c.recv()
        if msg is None or 'event' not in msg:
            return msg


def query_status(c, job_id):
    """job_id's status in query-block-jobs (events before the reply are
    read and not logged: call it where none can come but progress)."""
    c.send('query-block-jobs')
    for j in recv_reply(c)['return']:
        if j['device'] == job_id:
            return j['status']
    return None


def graph_quiet(c):
    """graph() without logging, for before/after comparisons."""
    saved = t.log
    t.log = lambda *a, **k: None
    try:
        return graph(c)
    finally:
        t.log = saved


def wait_event(c, name):
    """Read (without logging) up to the event name."""
    while True:
        msg = c.recv()
        if msg is None or msg.get('event') == name:
            return msg


def graph(c):
    """The backing edges between named nodes (x-debug-query-block-graph),
    the node each export uses, and each named format node's read-only
    flag, one line; file nodes and automatic names left out.  (Backends
    are not shown: qsd 7.2's graph leaves a commit job's own out, while
    strata's lists every backend.)"""
    c.send('x-debug-query-block-graph')
    g = recv_reply(c)['return']
    names = {n['id']: n['name'] for n in g['nodes']}
    out = []
    for e in g['edges']:
        p, ch = names.get(e['parent']), names.get(e['child'])
        if e['name'] == 'backing' and p and ch:
            out.append('%s->%s' % (p, ch))

    c.send('query-block-exports')
    for e in recv_reply(c)['return']:
        out.append('export->%s' % e['node-name'])
    c.send('query-named-block-nodes', {'flat': True})
    for n in recv_reply(c)['return']:
        if n['drv'] != 'file' and not n['node-name'].startswith('#'):
            out.append('%s:%s' % (n['node-name'], 'ro' if n['ro'] else 'rw'))
    t.log('graph: ' + ' '.join(sorted(out)))
    return sorted(out)


def job(c, cmd, args, job_id, until=('null',)):
    """Send cmd, which starts job job_id, and log every message up to its
    reply and, if the command succeeds, the job's status in until."""
    c.send(cmd, args)
    replied = rested = False
    while not (replied and rested):
        msg = c.log_next()
        if msg is None:
            return None
        if 'event' not in msg:
            replied = True
            if 'error' in msg:
                return msg
        elif (msg['event'] == 'JOB_STATUS_CHANGE'
              and msg['data']['id'] == job_id
              and msg['data']['status'] in until):
            rested = True
    return msg


# Also mask the length in job events (set where it depends on timing: a
# mirror's total grows with the guest writes it has to copy again).
MASK_LEN = False


def log_masked(c):
    """Log the next message with the progress of job events masked (how
    far a job got before it was cancelled or failed depends on timing)."""
    text = c.recv_text()
    if text is None:
        qmp.log('<EOF>')
        return None
    qmp.log(mask(text))
    return json.loads(text)


def mask(text):
    text = re.sub(r'"offset": \d+', '"offset": OFFSET', text)
    if MASK_LEN:
        text = re.sub(r'"len": \d+', '"len": LEN', text)
    return text


def wait_until(c, job_id, until):
    """Log messages (progress masked) up to job_id's status in until."""
    while True:
        msg = log_masked(c)
        if msg is None or (msg.get('event') == 'JOB_STATUS_CHANGE'
                           and msg['data']['id'] == job_id
                           and msg['data']['status'] in until):
            return msg


def cmd_until(c, cmd, args, job_id, until, reply_last=False):
    """Send cmd and log messages (progress masked) up to its reply and
    job_id's status in until.  reply_last: the reply is logged after the
    events, for a command whose reply may come before or after them
    (a cancel that finds the job in the middle of a request or not)."""
    c.send(cmd, args)
    replied, rested = False, not until
    reply = None
    while not (replied and rested):
        if reply_last:
            text = c.recv_text()
            msg = None if text is None else json.loads(text)
            if msg is not None and 'event' not in msg:
                reply = text
            elif msg is not None:
                qmp.log(mask(text))
        else:
            msg = log_masked(c)
        if msg is None:
            return None
        if 'event' not in msg:
            replied = True
        elif (msg['event'] == 'JOB_STATUS_CHANGE'
              and msg['data']['id'] == job_id
              and msg['data']['status'] in until):
            rested = True
    if reply is not None:
        qmp.log(reply)
    return msg


def log_images(layers, no_map=(), compare=()):
    """qemu-img 7.2's view: the top image equals the model, each image is
    clean, what each image allocates (not for the images in no_map: how
    much of base a failed or cancelled job wrote depends on timing), and
    the backing file each names."""
    for name in compare or layers[-1:]:
        r = t.qemu_img(['compare', '-U', path(name),
                        os.path.join(D, 'model.raw')])
        t.log('compare %s model: %s' % (name, r.out.strip()))
    for name in layers:
        r = t.qemu_img(['check', '-U', path(name)])
        t.log('check %s: %s' % (name, 'clean' if r.rc == 0 else r.out))
        if name not in no_map:
            r = t.run_qemu_io(['-U', '-f', 'qcow2', '-r', '-c', 'map',
                               path(name)])
            t.log('map %s:\n%s' % (name, r.out.rstrip()))
        r = t.qemu_img(['info', '-U', '--output=json', path(name)])
        info = json.loads(r.raw)
        t.log('%s backing file: %s (%s)' % (
            name, info.get('backing-filename', '-').replace(D + '/', ''),
            info.get('backing-filename-format', '-')))


def filter_dir(text):
    return re.sub(re.escape(D) + '/?', 'TEST_DIR/', text)
