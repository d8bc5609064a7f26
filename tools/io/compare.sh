#!/bin/bash
# Run the same qemu-io command lines through qemu-io (the oracle) and
# strata-io, each on a fresh copy of the test images, and diff the output
# (stdout and stderr merged, as scripts see them) and the exit status.
#
# usage: tools/io/compare.sh [path/to/strata-io] [cases-file]
#
# Every line of the cases file is one case: the arguments of both programs,
# in shell syntax.  "$D" names the scratch directory holding the images
# raw.img (1 MiB raw, first 64 KiB 0x11) and empty.raw (1 MiB of zeroes).
# A case starting with "stdin:" is "stdin: PRINTF-FORMAT :: ARGS", the
# commands being piped in.  Lines starting with '#' are comments.
# Differences that only come from timing, the program name or automatic
# node names are filtered away.  Exits 1 if any case differs.

set -u
here=$(cd "$(dirname "$0")" && pwd)
strata=${1:-$here/../../build-io/strata-io}
cases=${2:-$here/compare-cases.txt}
qemu=$(command -v "${QEMU_IO:-qemu-io}")
D=$(mktemp -d /tmp/strata-io-cmp.XXXXXX)
trap 'rm -rf "$D"' EXIT
# shellcheck source-path=SCRIPTDIR source=../common/compare-lib.sh
. "$here/../common/compare-lib.sh"

prepare() {
    rm -f "$D"/*.img "$D"/*.raw
    head -c 65536 /dev/zero | tr '\0' '\021' > "$D/raw.img"
    truncate -s 1M "$D/raw.img"
    truncate -s 1M "$D/empty.raw"
    printf 'pattern-file' > "$D/pat.txt"
    printf '[inject-error]\nevent = "read_aio"\nerrno = "5"\n' > "$D/rerr.conf"
    printf '[inject-error]\nevent = "write_aio"\nerrno = "5"\n' > "$D/werr.conf"
}

filter() {
    sed -E -e 's/[0-9]+ ops; [0-9:.]+( sec)? \([^)]*\)/N ops; TIME/' \
           -e 's/^[0-9]+,[0-9]+,[0-9:.]+,[-0-9.naif]+,[-0-9.naif]+$/CSV/' \
           -e 's/(qemu|strata)-io/PROG/g' \
           -e 's/#block[0-9]+/#blockN/g' \
           -e 's/line [0-9]+: +[0-9]+ /line N: PID /' \
           -e "s|$D|D|g"
}
filter_want() { filter; }

run_case() { # prog case
    local prog=$1 c=$2 input args
    if [[ $c == stdin:* ]]; then
        input=${c#stdin: }
        args=${input#* :: }
        input=${input%% :: *}
        input=${input//\$D/$D}
        # shellcheck disable=SC2059
        printf "$input" | eval "\"$prog\" $args" 2>&1
    else
        eval "\"$prog\" $c" </dev/null 2>&1
    fi
    echo "exit=$?"
}

compare_cases "$qemu" "$strata" "$cases"
