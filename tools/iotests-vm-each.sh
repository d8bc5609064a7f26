#!/usr/bin/env bash
# Run QEMU 7.2's VM iotests one by one through tools/iotests-vm-shim.sh, each
# under a time limit (a test waiting for something the daemon never sends,
# such as a qtest reply, would hold up the rest), and collect one TSV.
#
#   iotests-vm-each.sh qemu   FMT OUT TEST...
#   iotests-vm-each.sh strata FMT OUT BUILD_DIR TEST...
#
# OUT/<mode>-<fmt>.tsv: test, pass|fail|skip|timeout; each test's TAP log and
# failing output (NNN.out.bad) under OUT/<mode>-<fmt>/<test>/.
# VM_TEST_TIMEOUT: seconds per test (default 120).
#
# The tests are QEMU 7.2.0's with Debian's stable updates applied
# (tools/iotests-vm-tree.sh), made once in the cache: the programs on the
# machine are Debian's 7.2.N, and the 7.2.0 goldens disagree with them where
# the updates changed behaviour (141, the SHUTDOWN order of 127/184/247).
# IOTESTS_REF=DIR picks another tree; IOTESTS_ORIG=1 runs the 7.2.0 tests.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [[ -z ${IOTESTS_REF:-} && ${IOTESTS_ORIG:-0} != 1 ]]; then
  IOTESTS_REF=${XDG_CACHE_HOME:-$HOME/.cache}/strata-iotests-debian
  "$here/iotests-vm-tree.sh" "$IOTESTS_REF" || exit 1
  export IOTESTS_REF
fi
mode=$1 fmt=$2 out=$3; shift 3
build=()
if [[ $mode == strata ]]; then build=("$(cd "$1" && pwd)"); shift; fi
mkdir -p "$out"
tsv=$out/$mode-$fmt.tsv
: > "$tsv"
for t in "$@"; do
  d=$out/$mode-$fmt/$t
  rm -rf "$d"; mkdir -p "$d/td"
  TEST_DIR=$d/td KEEP=1 IOTESTS_OUT=$d \
    timeout -k 10 "${VM_TEST_TIMEOUT:-120}" \
    "$here/iotests-vm-shim.sh" "$mode" "$fmt" "${build[@]}" "$t" > "$d/run.log" 2>&1
  rc=$?
  if [[ $rc == 124 || $rc == 137 ]]; then
    printf '%s\ttimeout\n' "$t" >> "$tsv"
  else
    s=$(cut -f2 "$d/$mode-$fmt.tsv" 2>/dev/null)
    printf '%s\t%s\n' "$t" "${s:-fail}" >> "$tsv"
  fi
  tail -1 "$tsv"
done
