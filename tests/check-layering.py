#!/usr/bin/env python3
"""The layers above block/ use the library through its public headers
only: no private block/ header, no driver's own header, no reaching into a
BlockDriver or BlockNode, and (except with --allow-driver-interface) no
driver interface (strata/block-driver.h).  tools/, qapi/ and nbd/ are
checked in full; jobs/ with --allow-driver-interface, because a job is a
parent of the nodes it uses and defines its parent class (BlockChildClass)
there, as block/'s own parents do (docs/architecture.md, "Layers").

Scans the C sources under the given directories and lists every
violation; exit 1 if there is one.  With --expect-violations it checks
itself instead: every line marked "BAD" in the given sources must be
reported, and nothing else.
"""
import os
import re
import sys

DRIVER_INTERFACE = "includes the driver interface (use strata/block-ops.h)"

RULES = [
    # Any header found through a path into the library's own tree.
    (re.compile(r'#\s*include\s*"[^"]*\bblock/'), "includes a private block/ header"),
    (re.compile(r'#\s*include\s*"[^"]*block-int\.h"'), "includes block/block-int.h"),
    (re.compile(r'#\s*include\s*"[^"]*(qcow2|crypto)[^"/]*\.h"'),
     "includes a driver's private header"),
    (re.compile(r'#\s*include\s*"strata/block-driver\.h"'),
     DRIVER_INTERFACE),
    (re.compile(r'->\s*drv\b|\bdrv\s*->'), "reaches into a BlockDriver"),
    (re.compile(r'->\s*(bl|backing|file|backing_file|backing_format|opaque)\s*(\.|->|\[)'),
     "reads a BlockNode field"),
]


def sources(dirs):
    for d in dirs:
        for root, _, files in os.walk(d):
            for f in sorted(files):
                if f.endswith((".c", ".h")):
                    yield os.path.join(root, f)


def violations(path, rules):
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            code = line.split("//")[0]
            for rx, why in rules:
                if rx.search(code):
                    yield n, why, line
                    break


def main(argv):
    args = argv[1:]
    expect = "--expect-violations" in args
    allow_driver = "--allow-driver-interface" in args
    dirs = [a for a in args if not a.startswith("--")]
    if not dirs:
        sys.exit("usage: check-layering.py [--expect-violations] "
                 "[--allow-driver-interface] DIR...")
    rules = [r for r in RULES if not (allow_driver and r[1] == DRIVER_INTERFACE)]
    bad = 0
    for path in sources(dirs):
        found = {n: why for n, why, _ in violations(path, rules)}
        if expect:
            with open(path, encoding="utf-8") as fh:
                marked = {n for n, l in enumerate(fh, 1) if "BAD" in l}
            for n in sorted(marked - found.keys()):
                print(f"{path}:{n}: not reported")
                bad += 1
            for n in sorted(found.keys() - marked):
                print(f"{path}:{n}: reported but fine: {found[n]}")
                bad += 1
        else:
            for n, why in sorted(found.items()):
                print(f"{path}:{n}: {why}")
                bad += 1
    if bad:
        print(f"{bad} problem(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
