#!/usr/bin/env bash
# Make a copy of QEMU 7.2.0's iotests with Debian's stable updates
# (v7.2.1 ... v7.2.N, the patches of the installed package's source) applied
# to tests/qemu-iotests and python/, so that the tests match the binaries
# they run against: Debian 12's qemu-system and qemu-storage-daemon are
# 7.2.N, and some of their behaviour the 7.2.0 goldens do not have (v7.2.9
# runs QMP commands from the monitor's own context, which puts a job's
# events before a cancel's reply; its 141 is rewritten for that).
#
#   iotests-vm-tree.sh DIR   -> DIR/qemu-7.2.0 (made once); then
#   IOTESTS_REF=DIR tools/iotests-vm-each.sh ...
set -euo pipefail
dir=$1
ref=${IOTESTS_SRC_REF:-${XDG_CACHE_HOME:-$HOME/.cache}/strata-iotests}
src=$ref/qemu-7.2.0
[[ -x $src/tests/qemu-iotests/check ]] || { echo "no $src: run ../shared/tools/qemu-iotests/run.sh once" >&2; exit 1; }
[[ -e $dir/qemu-7.2.0/.debian-stable ]] && exit 0
deb=$(ls "$ref"/qemu_7.2+dfsg-*.debian.tar.xz | tail -1)
mkdir -p "$dir"
rm -rf "$dir/qemu-7.2.0" "$dir/debian"
cp -a "$src" "$dir/qemu-7.2.0"
tar xJf "$deb" -C "$dir"
# Only the iotests and their python library: the rest of the tree is not
# built here.
for p in $(grep -E '^v7\.2\.[0-9]+\.diff$' "$dir/debian/patches/series"); do
  python3 - "$dir/debian/patches/$p" > "$dir/part.diff" <<'PY'
import re, sys
text = open(sys.argv[1], encoding='utf-8', errors='surrogateescape').read()
parts = re.split(r'(?m)^(?=diff --git )', text)
keep = [q for q in parts[1:]
        if re.match(r'diff --git a/(tests/qemu-iotests|python)/', q)]
sys.stdout.write(''.join(keep))
PY
  if [[ -s $dir/part.diff ]]; then
    patch -s -p1 -d "$dir/qemu-7.2.0" < "$dir/part.diff"
  fi
done
rm -f "$dir/part.diff"
chmod +x "$dir"/qemu-7.2.0/tests/qemu-iotests/[0-9][0-9][0-9] \
         "$dir"/qemu-7.2.0/tests/qemu-iotests/tests/* 2>/dev/null || true
touch "$dir/qemu-7.2.0/.debian-stable"
echo "$dir/qemu-7.2.0: tests/qemu-iotests and python/ at Debian's $(basename "$deb" .debian.tar.xz)"
