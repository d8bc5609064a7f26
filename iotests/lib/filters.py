"""Output filters for strata iotests.

Each filter takes a string and returns a string.  They make the output
of qemu-io/strata-io and qemu-img/strata-img comparable between runs and
between the two implementations: timings, temporary paths, program names,
PIDs and generated node names are replaced by fixed placeholders, following
the conventions of QEMU's own iotests (common.filter / iotests.py).

Invariant: every filter is idempotent, so the runner may apply
filter_all() to output a test already filtered.
"""

import os
import re

# "64 KiB, 1 ops; 00.00 sec (1.421 GiB/sec and 23286.1401 ops/sec)"
# Long runs print "0:46:24.31" instead of "00.00 sec"; zero-length requests
# print "0 bytes/sec"; aio_write -z prints "inf".
_IO_TIMING = re.compile(
    r'[0-9]+ ops; [0-9/:. sec]+ \([0-9/.inf]+ [EPTGMKiBbytes]+/sec '
    r'and [0-9/.inf]+ ops/sec\)')
# "read -C": "bytes,ops,time,bytes-per-sec,ops-per-sec"
_IO_CSV = re.compile(
    r'^([0-9]+),([0-9]+),[0-9:.]+,[0-9.inf]+,[0-9.inf]+$', re.M)
_IO_PROMPT = re.compile(r'\b(?:qemu|strata)-io> ')
_IMG_BENCH = re.compile(r'Run completed in [0-9.]+ seconds\.')
_IO_NAME = re.compile(r'\b(?:qemu|strata)-io\b')
_IMG_NAME = re.compile(r'\b(?:qemu|strata)-img\b')
_NODE_ID = re.compile(r'#block[0-9]+')
_PID_WORD = re.compile(r'\b(pid|PID|process) [0-9]+\b')
_DISK_SIZE = re.compile(r'^disk size: .*$', re.M)
_ACTUAL_SIZE = re.compile(r'"actual-size": [0-9]+')


def filter_qemu_io(text):
    """Timing lines, -C statistics and interactive prompts of qemu-io."""
    text = text.replace('\r', '')
    text = _IO_TIMING.sub('X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)',
                          text)
    text = _IO_CSV.sub(r'\1,\2,XX:XX:XX.X,XXX,XXX', text)
    return _IO_PROMPT.sub('', text)


def filter_img_bench(text):
    return _IMG_BENCH.sub('Run completed in X.XXX seconds.', text)


def filter_prog_names(text):
    """qemu-io/strata-io -> PROG, qemu-img/strata-img -> IMGPROG."""
    text = _IO_NAME.sub('PROG', text)
    return _IMG_NAME.sub('IMGPROG', text)


def filter_test_dir(text, test_dir=None):
    test_dir = test_dir or os.environ.get('TEST_DIR')
    if not test_dir:
        return text
    real = os.path.realpath(test_dir)
    for d in sorted({test_dir.rstrip('/'), real.rstrip('/')}, key=len,
                    reverse=True):
        text = text.replace(d, 'TEST_DIR')
    return text


def filter_node_ids(text):
    """Automatically generated node names ("#block123")."""
    return _NODE_ID.sub('NODE_NAME', text)


def filter_pids(text, pids=()):
    """Known PIDs anywhere, and any number after "pid"/"process"."""
    for pid in sorted({str(p) for p in pids}, key=len, reverse=True):
        text = re.sub(r'\b%s\b' % pid, 'PID', text)
    return _PID_WORD.sub(r'\1 PID', text)


def filter_disk_size(text):
    """qemu-img info's allocation figures depend on the filesystem."""
    text = _DISK_SIZE.sub('disk size: DISK_SIZE', text)
    return _ACTUAL_SIZE.sub('"actual-size": ACTUAL_SIZE', text)


# AddressSanitizer's one-time notice that it sees our coroutine stacks being
# created with makecontext(): an artefact of the sanitizer build, not output.
# It may follow an interactive prompt on the same line.
_ASAN_NOTICE = re.compile(r'==[0-9]+==WARNING: ASan doesn.t fully support '
                          r'makecontext/swapcontext[^\n]*\n?')


def filter_sanitizer_notices(text):
    return _ASAN_NOTICE.sub('', text)


def filter_all(text, test_dir=None):
    """The default chain, applied to every output line by log()."""
    text = filter_sanitizer_notices(text)
    text = filter_test_dir(text, test_dir)
    text = filter_qemu_io(text)
    text = filter_img_bench(text)
    text = filter_prog_names(text)
    text = filter_node_ids(text)
    return text
