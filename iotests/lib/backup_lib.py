"""Helpers for the backup tests (qmp-backup-*): start a job, log the
daemon's messages up to a point, and compare images with qemu-img (the
same checker in both modes)."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402


def until(c, pred):
    """Log messages up to and including the first one pred accepts."""
    while True:
        msg = c.log_next()
        if msg is None or pred(msg):
            return msg


def is_reply(msg):
    return 'event' not in msg


def status(job_id, *states):
    return lambda m: (m.get('event') == 'JOB_STATUS_CHANGE'
                      and m['data']['id'] == job_id
                      and m['data']['status'] in states)


def event(name):
    return lambda m: m.get('event') == name


def send(c, cmd, args):
    """Send a command and log everything up to its reply."""
    c.send(cmd, args)
    return until(c, is_reply)


def wait_null(c, job_id):
    """Log the job's events until it is gone."""
    return until(c, status(job_id, 'null'))


def compare(a, b, fmt_a='raw', fmt_b='raw'):
    t.run_img(['compare', '-U', '-f', fmt_a, '-F', fmt_b, t.test_path(a),
               t.test_path(b)], prog='qemu').log()


def qemu_io(img, cmds, fmt='raw'):
    """Write a pattern etc. offline with qemu-io (quiet unless it fails)."""
    r = t.run_io(['-f', fmt] + t.cmd_args(cmds) + [t.test_path(img)],
                 prog='qemu')
    if r.rc:
        r.log()


def file_node(name, path):
    return ['--blockdev', 'driver=file,node-name=%s,filename=%s'
            % (name, t.test_path(path))]


def cmd_until(c, cmd, args, job_id, state='null'):
    """Send cmd and log everything up to both its reply and job_id
    reaching state (either may come first); an error reply ends it."""
    c.send(cmd, args)
    replied = reached = False
    while not (replied and reached):
        msg = c.log_next()
        if msg is None:
            return None
        if is_reply(msg):
            replied = True
            if 'error' in msg:
                return msg
        elif status(job_id, state)(msg):
            reached = True
    return msg


def wait_idle(c, job_id):
    """Ask query-block-jobs (nothing logged) until the job waits, e.g. for
    its speed limit, so that what a verb does next does not depend on a
    copy still in flight."""
    while True:
        c.send('query-block-jobs')
        while True:
            msg = c.recv()
            if 'event' not in msg:
                break
            qmp_log(msg)
        jobs = [j for j in msg['return'] if j['device'] == job_id]
        if not jobs or not jobs[0]['busy']:
            return


def qmp_log(msg):
    import json
    import qmp
    qmp.log(json.dumps(msg))
