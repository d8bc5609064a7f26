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
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
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
