#!/usr/bin/env python3
"""The generator refuses each schema under bad/ with a clear message.

Each bad/NAME.json starts with '# error: TEXT'; the generator must exit
with status 1, write nothing, and print TEXT (with the file and line of
the problem) on stderr.  The good test schema must generate cleanly.
"""

import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
gen = sys.argv[1]
failures = 0

for name in sorted(os.listdir(os.path.join(here, 'bad'))):
    path = os.path.join('bad', name)
    with open(os.path.join(here, path)) as f:
        first = f.readline()
    want = first.split('# error: ', 1)[1].strip()
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, gen, '-o', out, path], cwd=here,
                           capture_output=True, text=True)
        made = os.listdir(out)
    if r.returncode != 1 or want not in r.stderr or made or 'Traceback' in r.stderr:
        print('FAIL %s: status %d, files %s, stderr: %s'
              % (name, r.returncode, made, r.stderr.strip()))
        failures += 1
    elif path + ':' not in r.stderr:
        print('FAIL %s: message does not name the file: %s' % (name, r.stderr.strip()))
        failures += 1
    else:
        print('ok   %s: %s' % (name, r.stderr.strip()))

with tempfile.TemporaryDirectory() as out:
    r = subprocess.run([sys.executable, gen, '-o', out, '-p', 'x-',
                        'qapi-schema-test.json'], cwd=here,
                       capture_output=True, text=True)
    if r.returncode != 0 or len(os.listdir(out)) != 9:
        print('FAIL good schema: %s' % r.stderr)
        failures += 1

sys.exit(1 if failures else 0)
