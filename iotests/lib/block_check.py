"""x-strata-block-check (strata's online check, docs/qmp.md) for iotests.

qemu-storage-daemon 7.2 has no such command, so in oracle mode (which
writes the goldens) the check's result is qemu-img check -U's on the same
image while the daemon has it open: the golden holds QEMU's numbers and
problem lines, and strata's job must report exactly those.
"""
import json
import subprocess

import iotests as t

# qemu-img check --output=json's numbers (ImageCheck), in its order
NUMBERS = ('check-errors', 'image-end-offset', 'corruptions', 'leaks',
           'total-clusters', 'allocated-clusters', 'fragmented-clusters',
           'compressed-clusters')
# a job with auto-dismiss off, as QEMU 7.2 sends them (qmp-job-create)
STATUSES = ['created', 'running', 'waiting', 'pending', 'concluded', 'null']
# events other than JOB_STATUS_CHANGE seen while a check ran (names)
other_events = []


def _problem(line):
    """A line of the check's report: not qemu-img's closing "Check
    failed", nor the qcow2 driver's corruption warning (which the daemon
    raises as BLOCK_IMAGE_CORRUPTED; strata's online check mutes it for
    its metadata copy, a node no client knows)."""
    return line and not line.startswith('qcow2: Image is corrupt') and \
        not line.endswith(': Check failed')


def qemu_img_check(path, force_share=False):
    """qemu-img check --output=json: (numbers, problem lines, exit)."""
    argv = [t.img_prog('qemu'), 'check', '--output=json', '-f', 'qcow2']
    argv += ['-U'] if force_share else []
    p = subprocess.run(argv + [path], capture_output=True, text=True,
                       timeout=t.TIMEOUT)
    out = json.loads(p.stdout) if p.stdout.strip() else {}
    nums = {k: out[k] for k in NUMBERS if k in out}
    return nums, [line for line in p.stderr.splitlines() if _problem(line)], \
        p.returncode


def _until_reply(c, job, statuses):
    while True:
        msg = c.recv()
        if msg is None:
            raise RuntimeError('the daemon closed the connection')
        if 'event' not in msg:
            return msg
        _event(msg, job, statuses)


def _event(msg, job, statuses):
    if msg['event'] != 'JOB_STATUS_CHANGE':
        other_events.append(msg['event'])
    elif msg['data']['id'] == job:
        statuses.append(msg['data']['status'])


def run_job(c, job, node, args=None):
    """x-strata-block-check job on node to its end, then dismissed:
    (query reply or error reply, statuses seen)."""
    statuses = []
    a = {'job-id': job, 'node-name': node}
    a.update(args or {})
    c.send('x-strata-block-check', a)
    reply = _until_reply(c, job, statuses)
    if 'error' in reply:
        return reply, statuses
    while statuses[-1:] != ['concluded']:
        msg = c.recv()
        if msg is None:
            raise RuntimeError('the daemon closed the connection')
        if 'event' in msg:
            _event(msg, job, statuses)
    c.send('x-strata-query-block-check', {'id': job})
    info = _until_reply(c, job, statuses)
    c.send('job-dismiss', {'id': job})
    _until_reply(c, job, statuses)
    while statuses[-1:] != ['null']:
        msg = c.recv()
        if msg is None:
            raise RuntimeError('the daemon closed the connection')
        if 'event' in msg:
            _event(msg, job, statuses)
    return info, statuses


def online_check(c, job, node, path):
    """The check of node (the image at path) while the daemon runs:
    (numbers, problem lines, statuses, query reply or None)."""
    if t.oracle_mode():
        nums, msgs, _ = qemu_img_check(path, force_share=True)
        return nums, msgs, STATUSES, None
    info, statuses = run_job(c, job, node)
    if 'error' in info:
        return {'error': info['error']['desc']}, [], statuses, info
    ret = info['return']
    nums = {k: ret[k] for k in NUMBERS if k in ret}
    return nums, ret.get('messages', []), statuses, ret


def log_numbers(title, nums):
    t.log('%s: %s' % (title, json.dumps(nums, sort_keys=True)))
