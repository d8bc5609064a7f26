"""block-export-del of an export whose guests have exited.

A guest (qemu-io, qemu-img) exits before the server has seen its
connection close; a slow build (the ASan one) loses that race, and the
safe removal that follows refuses an export in use ("export 'e0' still in
use").  QEMU has the same race, only narrower.  QMP has no query of an
export's clients, so the removal is tried again while the export is in
use, up to the test timeout; the reply and the events before it are
logged as Client.cmd logs them.
"""
import json
import time

import iotests as t
import qmp


def export_del(c, exp_id):
    deadline = time.monotonic() + t.TIMEOUT
    while True:
        c.send('block-export-del', {'id': exp_id})
        text = c.recv_text()
        msg = json.loads(text)
        if 'still in use' not in msg.get('error', {}).get('desc', '') or \
                time.monotonic() > deadline:
            break
        time.sleep(0.01)
    qmp.log(text)
    while msg is not None and 'event' in msg:
        msg = c.log_next()
    return msg
