#!/usr/bin/env bash
# Run QEMU 7.2's iotests that start the system emulator with
# tools/qemu-system-shim in its place (a storage daemon underneath: qsd for
# mode qemu, strata-daemon for mode strata). Same arguments as
# ../shared/tools/qemu-iotests/run.sh, which it calls.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
ln -s "$here/qemu-system-shim" "$bin/qemu-system-x86_64"
run=${IOTESTS_RUN:-/work/shared/tools/qemu-iotests/run.sh}
PATH=$bin:$PATH "$run" "$@"
