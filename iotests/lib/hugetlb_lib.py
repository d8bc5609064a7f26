"""2 MiB huge pages for a test, given back however the test ends.

    with hugetlb_lib.Reserved(8) as hp:      # skips unless it can
        mnt = hp.mount()                     # a hugetlbfs (pagesize=2M)
        ...
        hp.taken()                           # pages in use or reserved

The machine's reservation (/sys/kernel/mm/hugepages/hugepages-2048kB/
nr_hugepages) is raised only as far as the test needs and put back to its
old value at the end, and a hugetlbfs mounted here is unmounted.  The test
runner kills a test that times out with SIGKILL, which runs no cleanup: so
a guardian process in a session of its own holds the read end of a pipe
whose write end only the test has, and when the test is gone (the pipe
reaches end of file) it puts the value back and unmounts, whether or not
the test already did.
"""

import os
import subprocess
import sys

import iotests as t

SYS = '/sys/kernel/mm/hugepages/hugepages-2048kB/'
PAGE = 2 << 20

_GUARD = r'''
import subprocess, sys
mounts = [line.strip() for line in sys.stdin]    # until the test is gone
for mnt in mounts:
    subprocess.run(['umount', mnt], stderr=subprocess.DEVNULL)
with open(%r + 'nr_hugepages', 'w') as f:
    f.write(sys.argv[1])
'''


def _read(name):
    with open(SYS + name) as f:
        return int(f.read())


def _write(value):
    with open(SYS + 'nr_hugepages', 'w') as f:
        f.write(str(value))


def _mounted_at(path):
    with open('/proc/mounts') as f:
        return any(line.split()[1] == path for line in f)


class Reserved:
    def __init__(self, pages):
        self.pages = pages
        self.old = None
        self.mnt = None
        self.guard = None

    def __enter__(self):
        if os.geteuid() != 0:
            t.skip('huge pages: the test must run as root to reserve them')
        if not os.access(SYS + 'nr_hugepages', os.W_OK):
            t.skip('huge pages: %snr_hugepages is not writable (no 2 MiB '
                   'huge pages on this kernel, or a read-only /sys)' % SYS)
        self.old = _read('nr_hugepages')
        self.guard = subprocess.Popen(
            [sys.executable, '-c', _GUARD % SYS, str(self.old)],
            stdin=subprocess.PIPE, text=True, start_new_session=True)
        free = _read('free_hugepages')
        if free < self.pages:
            _write(self.old + self.pages - free)
        if _read('free_hugepages') < self.pages:
            got = _read('free_hugepages')
            self._restore()
            t.skip('huge pages: the kernel reserved only %d free 2 MiB '
                   'pages of the %d needed (memory fragmented?)'
                   % (got, self.pages))
        self.base = self.taken()
        return self

    def mount(self):
        """A hugetlbfs with 2 MiB pages, mounted in TEST_DIR."""
        self.mnt = t.test_path('hugetlbfs')
        os.makedirs(self.mnt, exist_ok=True)
        self.guard.stdin.write(self.mnt + '\n')     # before it exists
        self.guard.stdin.flush()
        r = subprocess.run(['mount', '-t', 'hugetlbfs', '-o', 'pagesize=2M',
                            'none', self.mnt], capture_output=True, text=True)
        if r.returncode:
            self.mnt = None
            self._restore()
            t.skip('huge pages: cannot mount hugetlbfs: %s' % r.stderr.strip())
        return self.mnt

    def taken(self):
        """Huge pages in use or promised (reserved by a mapping), beyond
        those at the start."""
        used = (_read('nr_hugepages') - _read('free_hugepages') +
                _read('resv_hugepages'))
        return used - getattr(self, 'base', 0)

    def _restore(self):
        if self.mnt and _mounted_at(self.mnt):
            subprocess.run(['umount', self.mnt], check=False)
        if self.old is not None:
            _write(self.old)
        if self.guard:
            self.guard.stdin.close()
            self.guard.wait()
            self.guard = None

    def __exit__(self, *exc):
        self._restore()
        return False
