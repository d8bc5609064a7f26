"""Helpers for the job tests (qmp-job-*): commands that start a job,
logged with the job's events in the order the daemon sends them."""
import hashlib
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import iotests as t  # noqa: E402
import qmp  # noqa: E402

# The states after which a job sends nothing more until a client acts.
_RESTING = ('concluded', 'pending', 'null')


def job_cmd(c, cmd, args, job_id):
    """Send cmd, which starts job job_id, and log every message up to both
    its reply and the job's resting state (which comes before the reply
    when the job ends without waiting, after it otherwise)."""
    c.send(cmd, args)
    replied = rested = False
    while not (replied and rested):
        msg = c.log_next()
        if msg is None:
            return
        if 'event' not in msg:
            replied = True
            if 'error' in msg:
                return msg
        elif (msg['event'] == 'JOB_STATUS_CHANGE'
              and msg['data']['id'] == job_id
              and msg['data']['status'] in _RESTING):
            rested = True


def create(c, job_id, options):
    return job_cmd(c, 'blockdev-create',
                   {'job-id': job_id, 'options': options}, job_id)


def image_digest(path):
    """Size and SHA-256 of a file: images made by qsd and by strata must
    be the same bytes."""
    with open(path, 'rb') as f:
        data = f.read()
    t.log('%s: %d bytes, sha256 %s' % (os.path.basename(path), len(data),
                                        hashlib.sha256(data).hexdigest()))


def has_commands(*names):
    """Whether the daemon under test has every command in names."""
    have = qmp.daemon_commands()
    return all(n in have for n in names)
