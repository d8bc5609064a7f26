"""strata's bitmap extensions (docs/qmp.md) for iotests, with their models.

x-strata-block-dirty-bitmap-recover and -copy do not exist in
qemu-storage-daemon 7.2, so in oracle mode (which writes the goldens) each
is replaced by what a user of QEMU would do for the same result:

- recover NODE NAME: block-dirty-bitmap-remove, then -add with the same
  name, granularity and persistence, then -merge from a bitmap the test
  made fully dirty (writes over a whole null-co node of the same length).
  Its refusals are remove's (busy, read-only, not found: the same checks
  in the same order, the same messages), except that a bitmap that is not
  inconsistent is refused with the extension's own message.  As a
  transaction action its model is block-dirty-bitmap-remove (the same
  refusals and the same rollback).
- copy: -add (disabled, the source's granularity unless another is
  asked) of the new bitmap, -merge of the source into it,
  -enable unless disabled was asked; as transaction actions those three.
  The refusals that come before anything is made (an unknown or unusable
  source, lengths that differ) are modelled from query-named-block-nodes.

So the golden holds QEMU's replies wherever QEMU can give them, and the
extension's documented messages where it cannot.
"""
import json
import time

import iotests as t
import qmp

NOT_INCONSISTENT = "Bitmap '%s' is not inconsistent: there is nothing to " \
                   "recover"


def _nodes(c):
    c.send('query-named-block-nodes', {'flat': True})
    return {n['node-name']: n for n in json.loads(c.recv_text())['return']}


def bitmaps(c, node):
    """name -> BlockDirtyInfo of node's bitmaps."""
    n = _nodes(c).get(node, {})
    return {b['name']: b for b in n.get('dirty-bitmaps', [])}


def log_bitmaps(c, *nodes):
    """The bitmaps of each node, sorted by name (a model re-adds some, so
    qsd's newest-first order would differ)."""
    for node in nodes:
        bms = sorted(bitmaps(c, node).values(), key=lambda b: b['name'])
        qmp.log('%s: %s' % (node, json.dumps(bms)))


def _error(desc):
    qmp.log(json.dumps({'error': {'class': 'GenericError', 'desc': desc}}))


def _quiet(c, cmd, args):
    c.send(cmd, args)
    while True:
        msg = c.recv()
        if 'event' not in msg:
            return msg


def recover(c, node, name, full):
    """x-strata-block-dirty-bitmap-recover; full maps a granularity to the
    (node, name) of a fully dirty bitmap of that granularity."""
    args = {'node': node, 'name': name}
    if not t.oracle_mode():
        return c.cmd('x-strata-block-dirty-bitmap-recover', args)
    nodes = _nodes(c)
    bm = {b['name']: b for b in nodes.get(node, {}).get('dirty-bitmaps',
                                                          [])}.get(name)
    if bm and not bm.get('inconsistent') and not bm['busy'] and \
            not nodes[node]['ro']:
        _error(NOT_INCONSISTENT % name)
        return None
    reply = _quiet(c, 'block-dirty-bitmap-remove', args)
    if 'error' in reply:
        qmp.log(json.dumps(reply))
        return reply
    src = full[bm['granularity']]
    for cmd, a in (('block-dirty-bitmap-add',
                    dict(args, granularity=bm['granularity'],
                         persistent=bm['persistent'])),
                   ('block-dirty-bitmap-merge',
                    {'node': node, 'target': name,
                     'bitmaps': [{'node': src[0], 'name': src[1]}]})):
        reply = _quiet(c, cmd, a)
        if 'error' in reply:
            raise RuntimeError('model of recover: %s' % reply)
    qmp.log('{"return": {}}')
    return reply


def recover_action(node, name):
    kind = 'block-dirty-bitmap-remove' if t.oracle_mode() else \
        'x-strata-block-dirty-bitmap-recover'
    return {'type': kind, 'data': {'node': node, 'name': name}}


def _copy_steps(c, a):
    """The QEMU commands of a copy; the new bitmap gets the source's
    granularity unless another is asked (add's default would be the
    node's)."""
    target = a.get('target-node', a['node'])
    add = {'node': target, 'name': a['target-name'], 'disabled': True}
    src = bitmaps(c, a['node']).get(a['name'])
    if src:
        add['granularity'] = src['granularity']
    for k in ('granularity', 'persistent'):
        if k in a:
            add[k] = a[k]
    steps = [('block-dirty-bitmap-add', add),
             ('block-dirty-bitmap-merge',
              {'node': target, 'target': a['target-name'],
               'bitmaps': [{'node': a['node'], 'name': a['name']}]})]
    if not a.get('disabled'):
        steps.append(('block-dirty-bitmap-enable',
                      {'node': target, 'name': a['target-name']}))
    return steps


def _copy_refused(c, a):
    """The model of copy's refusals before anything is made, or None."""
    nodes = _nodes(c)
    target = a.get('target-node', a['node'])
    for n in (a['node'], target):
        if n not in nodes:
            return "Node '%s' not found" % n
    src = {b['name']: b for b in nodes[a['node']].get('dirty-bitmaps',
                                                       [])}.get(a['name'])
    if not src:
        return "Dirty bitmap '%s' not found" % a['name']
    return None


def copy(c, a):
    """x-strata-block-dirty-bitmap-copy with arguments a."""
    if not t.oracle_mode():
        return c.cmd('x-strata-block-dirty-bitmap-copy', a)
    refused = _copy_refused(c, a)
    if refused:
        _error(refused)
        return None
    steps = _copy_steps(c, a)
    reply = _quiet(c, *steps[0])
    if 'error' not in reply:
        reply = _quiet(c, *steps[1])
        if 'error' in reply:
            _quiet(c, 'block-dirty-bitmap-remove',
                   {'node': steps[0][1]['node'], 'name': a['target-name']})
        elif len(steps) > 2:
            reply = _quiet(c, *steps[2])
    qmp.log(json.dumps(reply))
    return reply


def copy_actions(c, a):
    """The transaction action(s) of a copy (c: to look at the source)."""
    if not t.oracle_mode():
        return [{'type': 'x-strata-block-dirty-bitmap-copy', 'data': a}]
    return [{'type': cmd, 'data': args} for cmd, args in _copy_steps(c, a)]


def export_del(c, eid):
    """block-export-del: its reply and BLOCK_EXPORT_DELETED (which come in
    either order) logged in one; other events are skipped.  An export
    whose client has not been seen leaving yet ("still in use") is tried
    again, as lib/export_del.py does."""
    deadline = time.monotonic() + t.TIMEOUT
    while True:
        c.send('block-export-del', {'id': eid})
        reply, event = None, False
        while reply is None:
            msg = c.recv()
            if 'event' in msg:
                event = event or msg['event'] == 'BLOCK_EXPORT_DELETED'
            else:
                reply = msg
        if 'still in use' not in reply.get('error', {}).get('desc', '') \
                or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    while 'error' not in reply and not event:
        msg = c.recv()
        event = msg.get('event') == 'BLOCK_EXPORT_DELETED'
    qmp.log('%s, deleted %s' % (json.dumps(reply), eid))


def checkpoint_actions(a):
    """The QEMU 7.2 transaction that x-strata-backup-checkpoint with
    arguments a is (docs/qmp.md "Fleecing"), in the command's order."""
    backup = {'device': a['node'], 'target': a['target'], 'sync': 'none'}
    for k in ('job-id', 'filter-node-name'):
        if k in a:
            backup[k] = a[k]
    actions = [{'type': 'blockdev-backup', 'data': backup}]
    if 'bitmap' in a:
        actions.append({'type': 'block-dirty-bitmap-disable',
                        'data': {'node': a['node'], 'name': a['bitmap']}})
    add = {'node': a['node'], 'name': a['new-bitmap']}
    for k in ('granularity', 'persistent'):
        if k in a:
            add[k] = a[k]
    actions.append({'type': 'block-dirty-bitmap-add', 'data': add})
    return actions


def checkpoint(c, a):
    """x-strata-backup-checkpoint with arguments a (its model: the
    transaction of checkpoint_actions); the reply, events skipped."""
    if t.oracle_mode():
        return _quiet(c, 'transaction', {'actions': checkpoint_actions(a)})
    return _quiet(c, 'x-strata-backup-checkpoint', a)


def checkpoint_action(a):
    """x-strata-backup-checkpoint with arguments a as transaction
    action(s): in oracle mode the QEMU 7.2 actions it stands for."""
    if t.oracle_mode():
        return checkpoint_actions(a)
    return [{'type': 'x-strata-backup-checkpoint', 'data': a}]
