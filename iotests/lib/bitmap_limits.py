"""Shared by the img-bitmap-limit-* / qmp-bitmap-limit-* tests: images
holding tens of thousands of bitmaps (qcow2_bitmap_gen), and their
listings summed up so that goldens stay small.

QEMU 7.2 walks every bitmap for each one it loads or checks, so on such
an image qemu-img check takes minutes; only oracle runs (which write the
goldens) get long timeouts.  The program under test keeps the default
ones: it must open these images quickly."""
import atexit
import json
import os
import re

from filters import filter_sanitizer_notices
import iotests as t
import qmp

SLOW = 1800 if t.oracle_mode() else t.TIMEOUT


def image_path(name):
    """TEST_DIR/name, a symbolic link to a file in /dev/shm where there is
    one.  These images hold hundreds of MiB once a program has rewritten
    their directory, and on a file system mounted with discard (this
    machine's ext4) freeing them at the end of the test took minutes of
    the host's discards; tmpfs frees them at once.  The link keeps the
    path (and so the goldens) the same."""
    path = t.test_path(name)
    shm = '/dev/shm'
    if not (os.path.isdir(shm) and os.access(shm, os.W_OK)):
        return path
    real = os.path.join(shm, 'strata-iotest-%d-%s' % (os.getpid(), name))
    open(real, 'wb').close()
    os.symlink(real, path)
    atexit.register(lambda: os.path.exists(real) and os.unlink(real))
    return path


def short(name):
    return name if len(name) <= 12 else '%s... (%d bytes)' % (name[:8],
                                                              len(name))


def squeeze(text):
    """Runs of one character (the long names) as 'c*N'."""
    return re.sub(r'(.)\1{15,}', lambda m: '%s*%d' % (m.group(1),
                                                      len(m.group(0))), text)


def log(result):
    result.log(extra_filters=(squeeze,))


def cmd(c, name, args=None):
    """c.cmd, names squeezed in the reply."""
    c.send(name, args)
    qmp.log(squeeze(c.recv_text()))


def log_info(path):
    """img info --output=json, the bitmaps summed up: how many, the first
    and last two; plus the text form's line count."""
    r = t.run_img(['info', '--output=json', path], timeout=SLOW)
    r.raw = filter_sanitizer_notices(r.raw)
    start = r.raw.find('\n{') + 1 if not r.raw.startswith('{') else 0
    if r.rc or start == 0 and not r.raw.startswith('{'):
        log(r)
        return
    if start:
        t.log(squeeze(t.filter_all(r.raw[:start]).rstrip('\n')))
    info = json.loads(r.raw[start:])
    bms = info.get('format-specific', {}).get('data', {}).get('bitmaps', [])
    t.log('bitmaps: %d' % len(bms))
    for b in bms if len(bms) <= 4 else bms[:2] + bms[-2:]:
        t.log('  %s %s %s' % (short(b['name']), b['granularity'],
                              b['flags']))
    r = t.run_img(['info', path], timeout=SLOW)
    # Only counted: filtering megabytes of names would take a minute
    # (but a sanitizer's notice is no line of the listing).
    lines = filter_sanitizer_notices(r.raw).splitlines()
    t.log('text: %d lines, %d names, exit %d'
          % (len(lines), sum(1 for x in lines if 'name: ' in x), r.rc))


def client(d):
    """A negotiated client whose replies may take SLOW seconds."""
    c = qmp.Client(d.sockets[0], timeout=SLOW)
    c.recv()
    c.send('qmp_capabilities')
    c.recv()
    return c


def _recv_big(c):
    """The next reply when it is megabytes long: qmp.Client tries to decode
    its buffer after every 64 KiB read, quadratic in the reply's length
    (minutes for 65535 bitmaps).  A compact reply ends at its first CR LF,
    so read up to that, then let the client decode it once."""
    parts = [c.buf]
    while not parts[-1].endswith(b'\r\n') and \
            b'\r\n' not in parts[-1][-65537:]:
        data = c.sock.recv(1 << 20)
        if not data:
            break
        parts.append(data)
    c.buf = b''.join(parts)
    return c.recv_text()


def log_node_bitmaps(c, node):
    c.send('query-named-block-nodes', {'flat': True})
    for n in json.loads(_recv_big(c))['return']:
        if n['node-name'] == node:
            bms = n.get('dirty-bitmaps', [])
            names = sorted(b['name'] for b in bms)
            qmp.log('%s: %d bitmaps, %d persistent, first %s, last %s'
                    % (node, len(bms), sum(b['persistent'] for b in bms),
                       short(names[0]), short(names[-1])))


def long_names(n):
    """n distinct names of QEMU's longest, 1023 bytes."""
    return ['d%05d' % i + 'x' * 1017 for i in range(n)]
