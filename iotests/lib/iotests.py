"""Helpers for strata iotests.

A test is an executable script in iotests/tests/ that prints a transcript;
the runner (iotests/check) compares it with the golden NAME.out file.
Import this module first: it reads the environment set by the runner, or
supplies defaults (a private TEST_DIR, removed at exit) when a test is run
directly.

Invariants:
- every subprocess started here has a timeout, and every long-lived child
  (qemu-storage-daemon, interactive holders) is killed at exit;
- everything printed through log()/io()/img() is filtered with
  filters.filter_all(), so goldens never contain timings, paths or
  program names;
- the "strata" programs are the subject under test; with ./check --oracle
  they are the QEMU programs, which is how goldens are generated.
"""

import atexit
import difflib
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from filters import filter_all, filter_disk_size, filter_pids  # noqa: F401

SKIP_STATUS = 77
TIMEOUT = 60            # default per-subprocess timeout, seconds

LIB_DIR = os.path.dirname(os.path.abspath(__file__))
SRC_ROOT = os.environ.get('SRC_ROOT') or os.path.dirname(
    os.path.dirname(LIB_DIR))
BUILD_DIR = os.environ.get('BUILD_DIR') or os.path.join(SRC_ROOT, 'build')
IMGFMT = os.environ.get('IMGFMT', 'raw')
IMGPROTO = os.environ.get('IMGPROTO', 'file')

STRATA_IO_PROG = os.environ.get('STRATA_IO_PROG') or os.path.join(
    BUILD_DIR, 'strata-io')
STRATA_IMG_PROG = os.environ.get('STRATA_IMG_PROG') or os.path.join(
    BUILD_DIR, 'strata-img')
QEMU_IO_PROG = os.environ.get('QEMU_IO_PROG') or 'qemu-io'
QEMU_IMG_PROG = os.environ.get('QEMU_IMG_PROG') or 'qemu-img'
QSD_PROG = os.environ.get('QSD_PROG') or 'qemu-storage-daemon'

if os.environ.get('TEST_DIR'):
    TEST_DIR = os.environ['TEST_DIR']
else:                                   # run directly, not by ./check
    TEST_DIR = tempfile.mkdtemp(prefix='strata-iotest-')
    os.environ['TEST_DIR'] = TEST_DIR
    atexit.register(shutil.rmtree, TEST_DIR, True)

_children = []          # Popen objects to kill at exit


def _reap_children():
    for p in _children:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


atexit.register(_reap_children)
# Make SIGTERM (e.g. from the runner) run the atexit handlers too.
signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))

# ---------------------------------------------------------------- output


def log(msg='', extra_filters=()):
    """Print msg (str, or anything json-able) after filtering."""
    if not isinstance(msg, str):
        msg = json.dumps(msg, sort_keys=True)
    for f in extra_filters:
        msg = f(msg)
    print(filter_all(msg), flush=True)


def section(title):
    log('\n=== %s ===\n' % title)


def skip(reason):
    """Skip the whole test; the runner prints the reason."""
    print('skip: %s' % reason, flush=True)
    sys.exit(SKIP_STATUS)


def _find(prog):
    if os.sep in prog:
        return prog if os.access(prog, os.X_OK) else None
    return shutil.which(prog)


def requires_qemu(*progs):
    """Skip unless the QEMU oracle programs are installed.

    progs: any of 'io', 'img', 'qsd' (default: io and img)."""
    paths = {'io': QEMU_IO_PROG, 'img': QEMU_IMG_PROG, 'qsd': QSD_PROG}
    for p in progs or ('io', 'img'):
        if not _find(paths[p]):
            skip('%s not found' % os.path.basename(paths[p]))


def requires_prog(*progs):
    """Skip unless the strata programs ('io', 'img') are built."""
    paths = {'io': STRATA_IO_PROG, 'img': STRATA_IMG_PROG}
    for p in progs or ('io',):
        if not _find(paths[p]):
            skip('strata-%s not built' % p)


def requires_formats(*fmts):
    if IMGFMT not in fmts:
        skip('not supported for format %s' % IMGFMT)


def oracle_mode():
    """True when the strata programs are really the QEMU ones."""
    return os.path.basename(STRATA_IO_PROG).startswith('qemu')

# ------------------------------------------------------------- programs


class Result:
    """Output (stdout+stderr merged, unfiltered) and exit status."""

    def __init__(self, raw, rc):
        self.raw = raw
        self.rc = rc

    @property
    def out(self):
        return filter_all(self.raw)

    def log(self, extra_filters=()):
        text = self.out
        for f in extra_filters:
            text = f(text)
        if text.endswith('\n'):
            text = text[:-1]
        if text:
            log(text)
        if self.rc != 0:
            log('[exit status %d]' % self.rc)
        return self


def run(argv, input=None, timeout=TIMEOUT, cwd=None, env=None):
    """Run argv with stdout and stderr merged, as QEMU's iotests do."""
    try:
        p = subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout,
                           cwd=cwd or TEST_DIR, env=env,
                           stdin=None if input is not None
                           else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b'').decode('utf-8', 'replace')
        return Result(out + '[timed out after %ss]\n' % timeout, -1)
    return Result(p.stdout.decode('utf-8', 'replace'), p.returncode)


def traced_env():
    """The environment for a program run under strace: LeakSanitizer
    cannot work under ptrace, so an ASan build must not look for leaks."""
    env = dict(os.environ)
    env['ASAN_OPTIONS'] = ':'.join(
        o for o in (env.get('ASAN_OPTIONS'), 'detect_leaks=0') if o)
    return env


def io_prog(prog='strata'):
    return STRATA_IO_PROG if prog == 'strata' else QEMU_IO_PROG


def img_prog(prog='strata'):
    return STRATA_IMG_PROG if prog == 'strata' else QEMU_IMG_PROG


def cmd_args(cmds):
    """['read 0 512', ...] -> ['-c', 'read 0 512', ...]"""
    if isinstance(cmds, str):
        cmds = [cmds]
    return [a for c in cmds for a in ('-c', c)]


def fmt_args(fmt=None):
    return ['-f', fmt or IMGFMT]


def run_io(args, prog='strata', **kw):
    """Run strata-io (or qemu-io with prog='qemu'); returns a Result."""
    return run([io_prog(prog)] + list(args), **kw)


def run_qemu_io(args, **kw):
    return run_io(args, prog='qemu', **kw)


def io(args, prog='strata', **kw):
    """run_io() and log its filtered output and a non-zero exit status."""
    return run_io(args, prog, **kw).log()


def qemu_io(args, **kw):
    return io(args, prog='qemu', **kw)


def run_img(args, prog='strata', **kw):
    return run([img_prog(prog)] + list(args), **kw)


def qemu_img(args, **kw):
    """QEMU's qemu-img.  Its LUKS key slot timing (PBKDF2 scaled by the
    thread's CPU time, read in milliseconds through getrusage) now and then
    reads no time at all on this VM and fails with "Unable to get accurate
    CPU usage" (seen in qmp-blockdev-reopen-defaults on a quiet machine):
    that failure of QEMU's own is retried, twice at most."""
    for _ in range(3):
        r = run_img(args, prog='qemu', **kw)
        if r.rc == 0 or 'Unable to get accurate CPU usage' not in r.raw:
            break
    return r


def img(args, prog='strata', **kw):
    return run_img(args, prog, **kw).log()

# ---------------------------------------------------------------- images


def parse_size(size):
    """'1M' -> 1048576; ints pass through."""
    if isinstance(size, int):
        return size
    units = 'kmgtpe'
    s = size.strip().lower()
    if s and s[-1] in units:
        return int(float(s[:-1]) * 1024 ** (units.index(s[-1]) + 1))
    return int(s)


def test_path(name):
    return name if os.path.isabs(name) else os.path.join(TEST_DIR, name)


def create_raw(path, size, pattern=None):
    """A sparse raw image, optionally filled with one byte value."""
    path = test_path(path)
    size = parse_size(size)
    with open(path, 'wb') as f:
        if pattern is None:
            f.truncate(size)
        else:
            chunk = bytes([pattern]) * (1 << 20)
            for off in range(0, size, len(chunk)):
                f.write(chunk[:size - off])
    return path


def read_bytes(path):
    with open(test_path(path), 'rb') as f:
        return f.read()


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b)) if len(a) != len(b) else None

# ---------------------------------------------------- differential tests


def differential(cmds, image_setup, args=None, name='img', target=None):
    """Run the same -c command list through qemu-io and strata-io.

    image_setup(path) creates the starting image; it is called once for
    each program's private copy (TEST_DIR/qemu/NAME, TEST_DIR/strata/NAME)
    and both copies must come out identical.  The programs run in their
    copy's directory with a relative file name (TARGET, default NAME; e.g.
    an --image-opts string naming NAME), so paths in messages agree.
    Logs a summary (identical output / exit status / image bytes) or the
    differences; returns True when everything matched."""
    args = fmt_args() if args is None else list(args)
    results, images = {}, {}
    for prog in ('qemu', 'strata'):
        d = os.path.join(TEST_DIR, prog)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        image_setup(os.path.join(d, name))
    if read_bytes(os.path.join(TEST_DIR, 'qemu', name)) != \
            read_bytes(os.path.join(TEST_DIR, 'strata', name)):
        log('differential: image_setup is not deterministic')
        return False
    for prog in ('qemu', 'strata'):
        d = os.path.join(TEST_DIR, prog)
        results[prog] = run_io(args + cmd_args(cmds) + [target or name],
                               prog, cwd=d)
        images[prog] = read_bytes(os.path.join(d, name))
    q, s = results['qemu'], results['strata']
    ok = True
    log('%d commands' % len(cmds))
    if q.out == s.out:
        log('output: identical (%d lines, %d failures)'
            % (q.out.count('\n'), q.out.count('failed')))
    else:
        ok = False
        log('output: DIFFERENT')
        for line in difflib.unified_diff(
                q.out.splitlines(), s.out.splitlines(),
                'qemu-io', 'strata-io', lineterm='', n=2):
            log(line)
    if q.rc == s.rc:
        log('exit status: identical (%d)' % q.rc)
    else:
        ok = False
        log('exit status: DIFFERENT (qemu-io %d, strata-io %d)'
            % (q.rc, s.rc))
    off = first_difference(images['qemu'], images['strata'])
    if off is None:
        log('image: identical (%d bytes)' % len(images['qemu']))
    else:
        ok = False
        log('image: DIFFERENT (sizes %d and %d, first difference at %d)'
            % (len(images['qemu']), len(images['strata']), off))
    return ok


def random_io_cmds(seed, count, size):
    """A seeded, reproducible qemu-io command list for a SIZE-byte image.

    Mostly valid requests at 512-byte-aligned and odd offsets, some
    pattern mismatches and some requests past EOF; aio requests are always
    followed by aio_flush because their completion order is not fixed."""
    rnd = random.Random(seed)
    cmds = []

    def span(limit=65536):
        align = rnd.choice((1, 512, 4096))
        off = rnd.randrange(0, size, align)
        length = rnd.randrange(1, limit // align + 1) * align
        if rnd.random() < 0.05:                 # sometimes past EOF
            off = size - length // 2
        return off, length

    for _ in range(count):
        r = rnd.random()
        off, length = span()
        pat = rnd.randrange(256)
        q = '-q ' if rnd.random() < 0.2 else ''
        if r < 0.25:
            cmds.append('write %s-P 0x%x %d %d' % (q, pat, off, length))
        elif r < 0.45:
            cmds.append('read %s-P 0x%x %d %d' % (q, pat, off, length))
        elif r < 0.50:
            cmds.append('read -v %d %d' % (off, rnd.randrange(1, 65)))
        elif r < 0.57:
            cmds.append('write %s-z %d %d' % (q, off, length))
        elif r < 0.62:
            cmds.append('discard %s%d %d' % (q, off, length))
        elif r < 0.70:
            parts = ' '.join(str(rnd.randrange(1, 8) * 512)
                             for _ in range(rnd.randrange(1, 4)))
            cmds.append('writev %s-P 0x%x %d %s' % (q, pat, off, parts))
        elif r < 0.75:
            cmds.append('readv %s%d %d %d' % (q, off, length, length))
        elif r < 0.82:
            cmds.append('aio_write -P 0x%x %d %d' % (pat, off, length))
            cmds.append('aio_flush')
        elif r < 0.86:
            cmds.append('aio_read %d %d' % (off, length))
            cmds.append('aio_flush')
        elif r < 0.90:
            cmds.append('alloc %d %d' % (off, length))
        elif r < 0.93:
            cmds.append(rnd.choice(('map', 'length', 'flush', 'info')))
        else:
            cmds.append('read %s%d %d' % (q, off, length))
    return cmds

# ------------------------------------------- long-lived helper processes


def _wait_for(cond, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise TimeoutError('timed out waiting for %s' % what)
        time.sleep(0.01)
    return True


class QSD:
    """A qemu-storage-daemon child with a QMP monitor; see start_qsd()."""

    _count = 0

    def __init__(self, args, timeout=10):
        QSD._count += 1
        base = os.path.join(TEST_DIR, 'qsd%d' % QSD._count)
        self.qmp_path = base + '.qmp'
        self.pidfile = base + '.pid'
        self.logfile = base + '.log'
        argv = [QSD_PROG] + list(args) + [
            '--chardev', 'socket,id=qmp0,path=%s,server=on,wait=off'
            % self.qmp_path,
            '--monitor', 'chardev=qmp0',
            '--pidfile', self.pidfile]
        self._log = open(self.logfile, 'wb')
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=self._log,
                                     stderr=subprocess.STDOUT)
        _children.append(self.proc)
        self.pid = self.proc.pid
        self._sock = None
        if not _wait_for(lambda: os.path.exists(self.pidfile) and
                         self._connect(), timeout, 'qemu-storage-daemon',
                         self.proc):
            raise RuntimeError('qemu-storage-daemon exited (%s):\n%s'
                               % (self.proc.returncode, self.output()))

    def _connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        try:
            s.connect(self.qmp_path)
        except OSError:
            s.close()
            return False
        self._sock, self._rfile = s, s.makefile('rb')
        self._recv()                                    # greeting
        self.qmp('qmp_capabilities')
        return True

    def _recv(self):
        while True:
            msg = json.loads(self._rfile.readline())
            if 'event' not in msg:
                return msg

    def qmp(self, cmd, **args):
        """Execute a QMP command; returns the response dict."""
        req = {'execute': cmd}
        if args:
            req['arguments'] = args
        self._sock.sendall(json.dumps(req).encode() + b'\n')
        return self._recv()

    def output(self):
        if not self._log.closed:
            self._log.flush()
        with open(self.logfile, 'rb') as f:
            return f.read().decode('utf-8', 'replace')

    def stop(self):
        """Terminate the daemon; returns its exit status."""
        if self._sock:
            self._sock.close()
            self._sock = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def start_qsd(args, timeout=10):
    """Start qemu-storage-daemon with ARGS (e.g. --blockdev, --nbd-server,
    --export); waits until its pidfile and QMP socket exist.  The daemon is
    killed at exit if the test does not stop() it."""
    return QSD(args, timeout)


class Interactive:
    """An interactive io program fed commands over a pipe.

    Used to hold an image open: start it, send a command such as 'length'
    and wait for its answer, then the image is known to be open."""

    def __init__(self, args, prog='strata'):
        self.proc = subprocess.Popen(
            [io_prog(prog)] + list(args), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=TEST_DIR)
        _children.append(self.proc)
        self.buf = b''

    def send(self, cmd):
        self.proc.stdin.write(cmd.encode() + b'\n')
        self.proc.stdin.flush()

    def expect(self, text, timeout=10):
        """Read output until TEXT appears; returns the output so far."""
        want = text.encode()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while want not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError('no %r from %s' % (text, self.proc.args))
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError('%s exited: %r' % (self.proc.args, self.buf))
            self.buf += chunk
        out, _, self.buf = self.buf.partition(want)
        return (out + want).decode('utf-8', 'replace')

    def close(self, timeout=10):
        """Close stdin (qemu-io then exits); returns the exit status."""
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        self.buf += self.proc.stdout.read()
        self.proc.stdout.close()
        return self.proc.returncode


def hold_image(args, prog='strata', probe='length', answer='\n'):
    """Start an interactive io program on ARGS, wait until it has opened
    the image (PROBE answered), and return the Interactive object."""
    h = Interactive(args, prog)
    h.send(probe)
    h.expect(answer)
    return h

# ------------------------------------------------------------ NBD servers

QEMU_NBD_PROG = os.environ.get('QEMU_NBD_PROG') or 'qemu-nbd'


class Server:
    """A long-lived server child (qemu-nbd, the fault server); see
    start_qemu_nbd() and start_fault_server().  Killed at exit."""

    def __init__(self, argv, ready, timeout=10):
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=TEST_DIR)
        _children.append(self.proc)
        if not _wait_for(ready, timeout, argv[0], self.proc):
            raise RuntimeError('%s exited: %s' % (
                argv[0], self.proc.stdout.read().decode('utf-8', 'replace')))

    def wait(self, timeout=TIMEOUT):
        """Wait for the server to exit; returns its output."""
        out, _ = self.proc.communicate(timeout=timeout)
        return out.decode('utf-8', 'replace')

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait(10)


def requires_qemu_nbd():
    if not _find(QEMU_NBD_PROG):
        skip('%s not found' % os.path.basename(QEMU_NBD_PROG))


def start_qemu_nbd(sock, image, args=()):
    """qemu-nbd serving IMAGE on the unix socket SOCK (in TEST_DIR) to any
    number of clients one after the other (-t); waits for the socket."""
    path = test_path(sock)
    if os.path.exists(path):
        os.unlink(path)
    return Server([QEMU_NBD_PROG, '-t', '-k', path] + list(args) + [image],
                  lambda: os.path.exists(path))


def start_fault_server(sock, size, args=()):
    """iotests/lib/nbd_fault_server.py on SOCK (see its usage); waits for
    its "Listening"."""
    path = test_path(sock)
    if os.path.exists(path):
        os.unlink(path)
    srv = Server([sys.executable, os.path.join(LIB_DIR, 'nbd_fault_server.py'),
                  path, str(size)] + list(args),
                 lambda: os.path.exists(path))
    line = srv.proc.stdout.readline().decode()
    if not line.startswith('Listening'):
        raise RuntimeError('fault server: %r' % line)
    return srv
