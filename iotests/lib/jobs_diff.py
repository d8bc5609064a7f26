"""Differential scenarios for block jobs (mirror, commit, stream, backup):
one scenario runs against the daemon under test, qemu-storage-daemon 7.2
in oracle mode (which writes the goldens), strata-daemon otherwise.

A scenario builds qcow2 images with qemu-img/qemu-io (the tools are QEMU's
in both modes: only the daemon is under test), starts the daemon with the
images as nodes and a writable NBD export of the guest's node, and drives
a job over QMP while a "guest" (qemu-io on nbd+unix://) writes a seeded
list of requests through the export.  Model keeps, per image, the writes
it received, so the expected contents of every image and chain are known
without trusting either daemon.  At the end the images are compared with
the model by qemu-img compare, and qemu-img check must find no errors.

What the golden holds, and how it is made comparable between runs and
between the daemons:
- command replies, as the daemon wrote them (timestamps filtered);
- each job's events, in the order the daemon sent them, grouped per job:
  the relative order of two jobs' events, and of a job's events and a
  reply, depends on scheduling;
- where offset and len in the events depend on timing (mirror and active
  commit copy a region again as often as the guest dirties it; a job cut
  short stops wherever it was), the scenario says so (racy) and they are
  logged as LEN and, when offset is not len, OFFSET (JD_RAW=1 in the
  environment logs them as they are, for debugging);
- generated node names (NODE_NAME), TEST_DIR, timestamps;
- the guest's qemu-io output only as a count of writes that succeeded.

Jobs are started with a low speed and sped up (block-job-set-speed 0)
once the guest has written, so that the guest's writes are known to reach
a running job: that is what the scenario is about, and it needs no sleep.
"""

import json
import os
import random
import re
import signal

import iotests as t
import qmp

CLUSTER = 65536
SIZE = 4 << 20
# Slow enough that no job finishes before the guest is done (a block job
# copies its first chunk, then sleeps for chunk/speed seconds).
SLOW = 65536


def requires_commands(*names):
    """Skip unless the daemon under test has every command in names (the
    reason names the first missing one), and the QEMU tools are there."""
    qmp.requires_daemon()
    t.requires_qemu('img', 'io')
    have = qmp.daemon_commands()
    for name in names:
        if name not in have:
            t.skip('%s has no %s yet' % (
                os.path.basename(qmp.daemon_prog()), name))


def path(name):
    return os.path.join(t.TEST_DIR, name + '.qcow2')


# ------------------------------------------------------------------ model

class Model:
    """The contents every image should have.  Each image is a list of
    writes (offset, bytes) in the order they happened; what an image reads
    is its backing image's contents with its own writes applied on top
    (qcow2 copies the rest of a cluster from the backing image when it
    allocates one, which reads the same)."""

    def __init__(self, size=SIZE):
        self.size = size
        self.writes = {}
        self.backing = {}

    def add(self, name, backing=None):
        self.writes[name] = []
        self.backing[name] = backing

    def write(self, name, off, data):
        self.writes[name].append((off, bytes(data)))

    def view(self, name, chain=True):
        """What NAME reads: with its backing chain, or alone."""
        if chain and self.backing[name] is not None:
            buf = self.view(self.backing[name])
        else:
            buf = bytearray(self.size)
        for off, data in self.writes[name]:
            buf[off:off + len(data)] = data
        return buf

    def replace(self, name, data, backing=None):
        """NAME now holds DATA everywhere (a job copied a whole view)."""
        self.writes[name] = [(0, bytes(data))]
        self.backing[name] = backing

    def save(self, name, data):
        """DATA as a raw file in TEST_DIR (for qemu-img compare)."""
        p = os.path.join(t.TEST_DIR, name + '.model')
        with open(p, 'wb') as f:
            f.write(data)
        return p


def request_list(seed, count, size=SIZE):
    """A seeded list of guest writes (offset, length, pattern; pattern
    None is a write of zeroes): 512-byte, 4 KiB and cluster aligned,
    inside one cluster and across several."""
    rnd = random.Random(seed)
    reqs = []
    for _ in range(count):
        align = rnd.choice((512, 4096, CLUSTER))
        length = rnd.choice((512, 4096, 65536, 192 * 1024))
        length = max(align, length // align * align)
        off = rnd.randrange(0, (size - length) // align + 1) * align
        pattern = None if rnd.random() < 0.15 else rnd.randrange(1, 256)
        reqs.append((off, length, pattern))
    return reqs


def io_cmds(reqs):
    return ['write -z %d %d' % (o, n) if p is None else
            'write -P 0x%02x %d %d' % (p, o, n) for o, n, p in reqs]


def apply(model, name, reqs):
    for off, length, pattern in reqs:
        model.write(name, off, bytes([pattern or 0]) * length)


# ----------------------------------------------------------------- images

class Images:
    """qcow2 images in TEST_DIR, made by qemu-img, and their Model."""

    def __init__(self, size=SIZE):
        self.model = Model(size)
        self.size = size

    def create(self, name, backing=None):
        args = ['create', '-f', 'qcow2', '-o', 'cluster_size=%d' % CLUSTER]
        if backing is not None:
            args += ['-b', path(backing), '-F', 'qcow2']
        r = t.qemu_img(args + [path(name), str(self.size)])
        if r.rc != 0:
            r.log()
            raise RuntimeError('qemu-img create failed')
        self.model.add(name, backing)

    def fill(self, name, seed, count):
        """Seeded writes into NAME (opened with its chain) before the
        daemon starts; logged as a count."""
        reqs = request_list(seed, count, self.size)
        r = t.run_qemu_io(['-f', 'qcow2'] + t.cmd_args(io_cmds(reqs))
                          + [path(name)])
        _log_writes('fill %s' % name, r, len(reqs))
        apply(self.model, name, reqs)

    def compare(self, name, expected, chain=True, label=None):
        """qemu-img compare of NAME (with its chain, or alone) with the
        contents EXPECTED; logs the verdict."""
        model = self.model.save(name, expected)
        if chain:
            img = ['-F', 'qcow2', path(name)]
        else:
            img = ['json:' + json.dumps({
                'driver': 'qcow2', 'backing': None,
                'file': {'driver': 'file', 'filename': path(name)}})]
        r = t.qemu_img(['compare', '-f', 'raw', model] + img)
        what = label or '%s%s' % (name, '' if chain else ' alone')
        _log('compare %s with the model: %s%s' % (
            what, r.out.strip().replace('\n', ' / '),
            '' if r.rc == 0 else ' [exit status %d]' % r.rc))
        os.unlink(model)
        return r.rc == 0

    def check(self, name, leaks=True):
        """qemu-img check: the errors it finds (and leaked clusters unless
        leaks=False: a daemon killed during a write may leave some, which
        qemu-img calls harmless, in numbers that depend on timing)."""
        r = t.qemu_img(['check', '--output=json', '-f', 'qcow2', path(name)])
        try:
            res = json.loads(r.out)
        except ValueError:
            _log('check %s: %s [exit status %d]' % (name, r.out.strip(),
                                                    r.rc))
            return False
        errs = {k: res.get(k, 0) for k in ('corruptions', 'check-errors')}
        line = 'check %s: corruptions %d, check errors %d' % (
            name, errs['corruptions'], errs['check-errors'])
        ok = not any(errs.values())
        if leaks:
            line += ', leaks %d' % res.get('leaks', 0)
            ok = ok and not res.get('leaks', 0)
        _log(line)
        return ok

    def backing_of(self, name):
        """The backing file qemu-img info reads in NAME's header."""
        r = t.qemu_img(['info', '--output=json', '-U', '-f', 'qcow2',
                        path(name)])
        info = json.loads(r.out)
        _log('%s: backing file %s (format %s)' % (
            name, info.get('backing-filename', 'none'),
            info.get('backing-filename-format', 'none')))


def _log(text):
    qmp.log(text)


section = t.section


def _log_writes(what, r, count):
    done = len(re.findall(r'^wrote \d+/\d+ bytes', r.out, re.M))
    if r.rc == 0 and done == count:
        _log('%s: %d writes' % (what, count))
    else:
        _log('%s: %d of %d writes' % (what, done, count))
        r.log()


def blockdev(name, backing=None, driver_file=None):
    """--blockdev JSON for the qcow2 image NAME as node NAME (file node
    NAME-file); backing: a node name, or None for no backing image."""
    return json.dumps({'driver': 'qcow2', 'node-name': name,
                       'file': driver_file or {
                           'driver': 'file', 'node-name': name + '-file',
                           'filename': path(name)},
                       'backing': backing})


# ----------------------------------------------------------------- daemon

class ScenarioError(Exception):
    pass


_RACY = re.compile(r'"(len|offset)": \d+')


class Session:
    """The daemon under test with the images as nodes, a writable NBD
    export of node EXPORT (the guest's disk), and one QMP client."""

    def __init__(self, images, nodes, export=None, extra=()):
        self.images = images
        self.model = images.model
        args = []
        for n in nodes:
            args += ['--blockdev', n if n.startswith('{') else
                     blockdev(n, images.model.backing[n])]
        self.sock = os.path.join(t.TEST_DIR, 'nbd.sock')
        if export is not None:
            args += ['--nbd-server',
                     'addr.type=unix,addr.path=%s' % self.sock,
                     '--export', 'type=nbd,id=exp0,node-name=%s,name=disk,'
                     'writable=on' % export]
        self.d = qmp.Daemon(args + list(extra))
        if export is not None:
            qmp.wait_for_file(self.sock)
        self.c = self.d.negotiated()
        self.events = []        # every event received, in order
        self.logged = set()     # indexes of events already logged
        self.racy = set()       # jobs whose progress figures race
        self.guest_layer = export
        self.guest_seed = 1000

    # -- QMP
    def _recv(self):
        msg = self.c.recv()
        if msg is None:
            raise RuntimeError('the daemon closed the QMP connection')
        if 'event' in msg:
            self.events.append(msg)
        return msg

    def cmd(self, name, args=None, log=True):
        """Send a command, return its reply (events before it are kept
        for the per-job log); the request and the reply are logged."""
        self.c.send(name, args)
        while True:
            msg = self._recv()
            if 'event' not in msg:
                break
        if log:
            _log('-> %s %s' % (name, '' if args is None else
                               json.dumps(args, sort_keys=True)))
            _log('<- %s' % json.dumps(msg, sort_keys=True))
        return msg

    def start(self, name, args, racy=False, may_fail=False):
        """A command that starts job args['job-id'] (or a transaction).
        If it fails and the scenario did not expect that, the scenario
        ends here (ScenarioError) rather than wait for a job that is not
        there."""
        if racy:
            self.racy.add(args.get('job-id'))
        reply = self.cmd(name, args)
        if 'error' in reply and not may_fail:
            self.log_other_events()
            for job in {ev['data'].get('id') or ev['data'].get('device')
                        for ev in self.events if 'data' in ev} - {None}:
                self.log_events(job)
            raise ScenarioError('%s failed: the scenario cannot go on'
                                % name)
        return reply

    def _job_events(self, job):
        """JOB's events not logged yet (a job id may be used again once
        the first job of that name is gone and its events logged)."""
        for i, ev in enumerate(self.events):
            data = ev.get('data', {})
            if i not in self.logged and job in (data.get('id'),
                                                data.get('device')):
                yield i, ev

    def wait(self, job, status):
        """Wait until JOB has sent JOB_STATUS_CHANGE to STATUS (now or
        before, since its events were last logged)."""
        def seen():
            return any(ev['event'] == 'JOB_STATUS_CHANGE'
                       and ev['data']['status'] == status
                       for _, ev in self._job_events(job))
        while not seen():
            self._recv()

    def wait_event(self, job, event):
        while not any(ev['event'] == event for _, ev in
                      self._job_events(job)):
            self._recv()

    def log_events(self, job, racy=None):
        """Log JOB's events not logged yet, in the order they came."""
        racy = job in self.racy if racy is None else racy
        for i, ev in list(self._job_events(job)):
            self.logged.add(i)
            text = json.dumps({'event': ev['event'],
                               'data': ev.get('data', {})}, sort_keys=True)
            if racy and not os.environ.get('JD_RAW'):
                text = _normalise_progress(text)
            _log('%s event %s' % (job, text))

    def log_other_events(self):
        """Events that belong to no job (export, node events)."""
        for i, ev in enumerate(self.events):
            data = ev.get('data', {})
            if i in self.logged or 'id' in data or 'device' in data:
                continue
            self.logged.add(i)
            _log('event %s' % json.dumps({'event': ev['event'],
                                          'data': data}, sort_keys=True))

    def job_status(self, job):
        """Log JOB's status from query-block-jobs (progress left out: it
        depends on timing)."""
        r = self.cmd('query-block-jobs', log=False)
        for info in r.get('return', []):
            if info['device'] == job:
                _log('%s: %s' % (job, info['status']))
                return info
        _log('%s: not in query-block-jobs' % job)

    def speed(self, job, speed=0):
        return self.cmd('block-job-set-speed', {'device': job,
                                                'speed': speed})

    # -- the guest
    def guest(self, count, layer=None):
        """COUNT seeded writes through the export; the model's layer (the
        node the export writes to now) gets them.  qemu-io flushes at
        exit, so they are on disk when it returns."""
        layer = layer or self.guest_layer
        self.guest_seed += 1
        reqs = request_list(self.guest_seed, count, self.model.size)
        uri = 'nbd+unix:///disk?socket=%s' % self.sock
        r = t.run_qemu_io(['-f', 'raw'] + t.cmd_args(io_cmds(reqs)) + [uri])
        _log_writes('guest', r, len(reqs))
        apply(self.model, layer, reqs)
        return reqs

    # -- the end
    def stop(self):
        """quit; logs the daemon's exit status and any output."""
        self.c.close()
        self.d.stop()

    def kill(self):
        """SIGKILL, as a crash: the daemon gets no chance to flush."""
        self.c.close()
        self.d.proc.send_signal(signal.SIGKILL)
        rc = self.d.proc.wait(t.TIMEOUT)
        self.d._log.close()
        _log('[daemon killed: exit status %d]' % rc)


def _normalise_progress(text):
    m = dict((k, int(v)) for k, v in
             re.findall(r'"(len|offset)": (\d+)', text))
    if 'len' not in m or 'offset' not in m:
        return text
    same = m['len'] == m['offset']
    return _RACY.sub(lambda x: '"%s": %s' % (
        x.group(1), 'LEN' if x.group(1) == 'len' or same else 'OFFSET'),
        text)


def cbw_view(before, reqs, size, cluster=CLUSTER):
    """What a sync=none backup target holds after the guest wrote REQS:
    the contents from before the writes, of every cluster they touched
    (copy-before-write copies whole clusters), and zeroes elsewhere."""
    out = bytearray(size)
    for off, length, _ in reqs:
        start = off // cluster * cluster
        end = min(size, -(-(off + length) // cluster) * cluster)
        out[start:end] = before[start:end]
    return out
