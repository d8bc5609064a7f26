"""The image-lock audit shared by the img-locks-* and io-locks tests.

Each case is a strata-img/qemu-img (or io program) command line and the
image an io program holds in another process while it runs, read-write or
read-only.
run_cases() runs qemu-img with a qemu-io holder (the reference, whose
lock and open errors and exit status are logged), then strata-img with a
qemu-io holder, qemu-img with a strata-io holder and strata-img with a
strata-io holder, each from a fresh copy of the images (a subcommand may
change them), and logs any run that prints or exits differently.
"""

import os
import shutil

import iotests as t
from filters import filter_disk_size

W = os.path.join(t.TEST_DIR, 'w')
TEMPLATE = os.path.join(t.TEST_DIR, 'template')

# The holder: read-write (the io programs' default) or read-only.
HOLDS = [('rw', []), ('ro', ['-r'])]


def make_template():
    """d.raw, d.qcow2 (data in both), base.qcow2 <- top.qcow2,
    b.raw <- tb.qcow2, base2.qcow2, and targets o.raw, o.qcow2."""
    os.makedirs(TEMPLATE)

    def img(*args):
        r = t.qemu_img(list(args), cwd=TEMPLATE)
        assert r.rc == 0, r.raw

    def io(*args):
        r = t.run_qemu_io(list(args), cwd=TEMPLATE)
        assert r.rc == 0, r.raw
    t.create_raw(os.path.join(TEMPLATE, 'd.raw'), '1M', pattern=1)
    t.create_raw(os.path.join(TEMPLATE, 'b.raw'), '1M', pattern=2)
    t.create_raw(os.path.join(TEMPLATE, 'o.raw'), '1M')
    for name in ('d', 'base', 'base2', 'o'):
        img('create', '-q', '-f', 'qcow2', name + '.qcow2', '1M')
    img('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2',
        'top.qcow2')
    img('create', '-q', '-f', 'qcow2', '-b', 'b.raw', '-F', 'raw',
        'tb.qcow2')
    io('-f', 'qcow2', '-c', 'write -P 3 0 64k', 'd.qcow2')
    io('-f', 'qcow2', '-c', 'write -P 4 64k 64k', 'top.qcow2')


def run(cmd, held, hold_args, holder, tool):
    shutil.rmtree(W, ignore_errors=True)
    shutil.copytree(TEMPLATE, W)
    fmt = 'raw' if held.endswith('.raw') else 'qcow2'
    h = t.Interactive(hold_args + ['-f', fmt, 'w/' + held], holder)
    h.send('length')
    h.expect('\n')
    if cmd[0] == 'io':
        r = t.run_io(cmd[1:], tool, cwd=W)
    else:
        r = t.run_img(cmd, tool, cwd=W)
    h.close()
    return (filter_disk_size(r.out), r.rc)


def run_cases(cases):
    """cases: (command line, [images to hold in turn]); a command line
    starting with 'io' runs the io programs instead of the img ones."""
    make_template()
    for cmd, held_list in cases:
        for held in held_list:
            for hold_name, hold_args in HOLDS:
                t.log('--- %s holds %s; %s'
                      % (hold_name, held, ' '.join(cmd)))
                ref = run(cmd, held, hold_args, 'qemu', 'qemu')
                out, rc = ref
                # Only the lines about locks and failures: the rest is the
                # subcommand's own output, compared but not kept.
                for line in out.splitlines():
                    if 'lock' in line or 'Could not' in line or \
                            'another process' in line:
                        t.log(line)
                t.log('[exit status %d]' % rc)
                for holder, tool in (('qemu', 'strata'), ('strata', 'qemu'),
                                     ('strata', 'strata')):
                    got = run(cmd, held, hold_args, holder, tool)
                    if got != ref:
                        t.log('DIFFERS (holder: %s, asking: %s):'
                              % (holder, tool))
                        t.log(got[0] + '[exit status %d]' % got[1])
