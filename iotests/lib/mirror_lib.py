"""Helpers for the mirror tests (qmp-mirror-*): images made by QEMU's own
tools (the same bytes in both modes), a daemon's messages logged up to an
event, and the resulting images compared and checked with qemu-img."""
import json
import os
import re
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import qmp  # noqa: E402


def qcow2(name, size, writes=(), backing=None, cluster_size=None):
    """A qcow2 image in TEST_DIR, made by qemu-img and written by qemu-io
    ('write -P 1 0 64k' ...); nothing logged unless it fails."""
    path = t.test_path(name)
    args = ['create', '-f', 'qcow2']
    if backing:
        args += ['-b', t.test_path(backing), '-F', 'qcow2']
    if cluster_size:
        args += ['-o', 'cluster_size=%d' % cluster_size]
    r = t.qemu_img(args + [path, str(size)])
    if r.rc != 0:
        r.log()
    if writes:
        r = t.run_qemu_io(['-f', 'qcow2'] + t.cmd_args(writes) + [path])
        if r.rc != 0:
            r.log()
    return path


def raw(name, size):
    return t.create_raw(name, size)


def blockdev(node, path, fmt='qcow2', extra=''):
    """--blockdev arguments for a file node NODE-file under a format node
    NODE (backing files not opened unless extra says so)."""
    return ['--blockdev', 'driver=file,node-name=%s-file,filename=%s'
            % (node, path),
            '--blockdev', 'driver=%s,node-name=%s,file=%s-file%s'
            % (fmt, node, node, extra)]


_BUSY = re.compile(r'"busy": (true|false)')


def filter_busy(text):
    """Whether a job's coroutine runs at the instant of a query is timing."""
    return _BUSY.sub('"busy": BUSY', text)


def _filter_progress(text):
    text = re.sub(r'"len": \d+', '"len": LEN', text)
    text = re.sub(r'"offset": \d+', '"offset": OFFSET', text)
    text = re.sub(r'"speed": \d+', '"speed": SPEED', text)
    text = re.sub(r'"current-progress": \d+', '"current-progress": CUR',
                  text)
    return re.sub(r'"total-progress": \d+', '"total-progress": TOTAL', text)


def log_msg(text, progress=True):
    """Log one message as the daemon wrote it; progress=False hides
    len/offset (guest writes make them depend on timing)."""
    text = filter_busy(text)
    if not progress:
        text = _filter_progress(text)
    qmp.log(text)


def until(c, pred, progress=True):
    """Log every message until one for which pred(msg) is true (logged
    too), and return it; None if the connection ends."""
    while True:
        text = c.recv_text()
        if text is None:
            t.log('[connection closed]')
            return None
        log_msg(text, progress)
        msg = json.loads(text)
        if pred(msg):
            return msg


def is_event(name, job=None):
    def pred(msg):
        if msg.get('event') != name:
            return False
        data = msg.get('data', {})
        return job is None or data.get('device', data.get('id')) == job
    return pred


def is_status(job, *statuses):
    def pred(msg):
        return (msg.get('event') == 'JOB_STATUS_CHANGE'
                and msg['data']['id'] == job
                and msg['data']['status'] in statuses)
    return pred


def cmd(c, name, args=None, progress=True, until_pred=None,
        reply_first=False):
    """Send a command, log messages up to its reply (and, with until_pred,
    on until that too has come); returns the reply.  reply_first: whether
    the reply or the job's first events come first is timing (a job that
    must wait for its I/O), so the reply is logged first, then the events
    in their order."""
    c.send(name, args)
    reply = None
    seen = until_pred is None
    held = []
    while reply is None or not seen:
        text = c.recv_text()
        if text is None:
            t.log('[connection closed]')
            return reply
        msg = json.loads(text)
        if reply_first and 'event' in msg:
            held.append(text)
        else:
            log_msg(text, progress)
            if reply_first and 'event' not in msg:
                for h in held:
                    log_msg(h, progress)
                held = []
                reply_first = False
        if 'event' not in msg:
            reply = msg
            if 'error' in msg:
                return reply
        elif until_pred and until_pred(msg):
            seen = True
    return reply


def quiet(c, name, args=None):
    """A command whose reply is not part of the transcript (no events may
    come meanwhile)."""
    c.send(name, args)
    while True:
        text = c.recv_text()
        if text is None:
            return None
        msg = json.loads(text)
        if 'event' not in msg:
            return msg
        log_msg(text)


def compare(a, b, fa='qcow2', fb='qcow2'):
    t.log('compare %s %s' % (os.path.basename(a), os.path.basename(b)))
    t.qemu_img(['compare', '-f', fa, '-F', fb, a, b]).log()


def check(path):
    r = t.qemu_img(['check', path])
    t.log('check %s: %s' % (os.path.basename(path),
                            'clean' if r.rc == 0 else 'exit %d' % r.rc))
    if r.rc != 0:
        r.log()


def backing_of(path):
    """The backing file qemu-img info reports (its base name) or none."""
    r = t.qemu_img(['info', '--output=json', path])
    info = json.loads(r.raw) if r.rc == 0 else {}
    b = info.get('backing-filename')
    t.log('%s: backing %s' % (os.path.basename(path),
                              os.path.basename(b) if b else 'none'))


def graph(c):
    """The node graph in one line, from x-debug-query-block-graph: each
    edge as parent -name-> child, sorted; automatic names stay NODE_NAME
    and job parents show their type."""
    c.send('x-debug-query-block-graph')
    while True:
        text = c.recv_text()
        msg = json.loads(text)
        if 'event' in msg:
            log_msg(text)
            continue
        break
    g = msg['return']
    name = {n['id']: n['name'] if n['type'] == 'block-driver'
            else '%s:%s' % (n['type'], n['name']) for n in g['nodes']}
    edges = sorted('%s -%s-> %s' % (name[e['parent']], e['name'],
                                    name[e['child']]) for e in g['edges'])
    qmp.log('graph: ' + ', '.join(edges))
