#!/usr/bin/env python3
"""Every public header and the generated QAPI headers compile together.

    check-headers.py INCLUDE_DIR QAPI_SRC_DIR QAPI_GEN_DIR -- CC [ARGS...]

A library type named as a QAPI type (docs/qapi.md, "Enums the library
owns") would make some handler unable to include both; this compiles one
unit that includes all of include/strata/*.h and qapi-{types,visit,
commands,events}.h, in both orders, and fails on any error or warning.
"""
import glob
import os
import subprocess
import sys
import tempfile


def main(argv):
    sep = argv.index('--')
    inc, qapi_src, qapi_gen = argv[1:sep]
    cc = argv[sep + 1:]
    public = sorted(os.path.basename(h)
                    for h in glob.glob(os.path.join(inc, 'strata', '*.h')))
    if not public:
        sys.exit('no headers under %s' % inc)
    lib = ['#include "strata/%s"\n' % h for h in public]
    gen = ['#include "qapi-%s.h"\n' % m
           for m in ('types', 'visit', 'commands', 'events')]
    flags = subprocess.run(['pkg-config', '--cflags', 'glib-2.0', 'jansson'],
                           check=True, capture_output=True,
                           text=True).stdout.split()
    bad = 0
    for name, order in (('library first', lib + gen),
                        ('generated first', gen + lib)):
        with tempfile.NamedTemporaryFile('w', suffix='.c') as f:
            f.writelines(order)
            f.flush()
            r = subprocess.run(cc + ['-std=gnu11', '-D_GNU_SOURCE',
                                     '-Wall', '-Wextra', '-Werror',
                                     '-fsyntax-only', '-I' + inc,
                                     '-I' + qapi_src, '-I' + qapi_gen] +
                               flags + [f.name],
                               capture_output=True, text=True)
        if r.returncode:
            print('%s: %d public headers + generated ones do not compile '
                  'together:\n%s' % (name, len(public), r.stderr))
            bad += 1
        else:
            print('%s: %d public headers + generated ones: ok'
                  % (name, len(public)))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
