#!/bin/bash
# Run the same qemu-img command lines through qemu-img (the oracle) and
# strata-img, each in a fresh scratch directory, and diff what a script
# sees: stdout and stderr merged, the exit status, and the files left
# behind (name, size, allocated blocks).
#
# usage: tools/img/compare.sh [path/to/strata-img] [cases-file]
#
# Every line of the cases file is one case: the arguments of both programs,
# in shell syntax, run from inside the scratch directory, which holds
# r.img (1 MiB raw, 4 KiB allocated), odd.img (1000 bytes), big.img
# (64 MiB raw), sub/base.raw (3 MiB), dir/ (a directory) and three
# 512-byte files with awkward names (see prepare).  Lines
# starting with '#' are comments.  Timings, the program name and the
# version/format lines of --help are filtered away.  Exits 1 if any case
# differs.  Nothing here measures speed.

set -u
here=$(cd "$(dirname "$0")" && pwd)
strata=${1:-$here/../../build-img/strata-img}
cases=${2:-$here/compare-cases.txt}
qemu=$(command -v "${QEMU_IMG:-qemu-img}")
D=$(mktemp -d "${TMPDIR:-/tmp}/strata-img-cmp.XXXXXX")
trap 'rm -rf "$D"' EXIT
# shellcheck source-path=SCRIPTDIR source=../common/compare-lib.sh
. "$here/../common/compare-lib.sh"

prepare() {
    rm -rf "${D:?}"/*
    mkdir -p "$D/sub" "$D/dir"
    truncate -s 1M "$D/r.img"
    printf 'x' | dd of="$D/r.img" conv=notrunc status=none
    truncate -s 1000 "$D/odd.img"
    truncate -s 64M "$D/big.img"
    # Names that need escaping in JSON (control, non-ASCII, invalid UTF-8).
    truncate -s 512 "$D/$(printf 'q"b\\c\td\001\303\251\342\202\254\360\237\230\200\177~x.img')"
    truncate -s 512 "$D/$(printf 'bad\377\376.img')"
    truncate -s 512 "$D/$(printf 'trunc\342\202.img')"
    truncate -s 3M "$D/sub/base.raw"
}

filter() {
    sed -E -e 's/Run completed in [0-9.]+ seconds\./Run completed in T seconds./' \
           -e '/^(qemu|strata)-img version /d' \
           -e '/^Copyright \(c\)/d' \
           -e '/^A qemu-img 7.2 compatible/d' \
           -e 's/(qemu|strata)-img/PROG/g' \
           -e 's/^Supported formats:.*/Supported formats: .../' \
           -e "s|$D|D|g"
}

# The help of qemu-img, less the subcommands strata-img does not have yet.
implemented=$("$strata" --help | sed -n 's/^  \([a-z]*\) .*/\1/p' | tr '\n' ' ')
filter_help() {
    awk -v impl=" $implemented " '
        /^Parameters to [a-z]+ subcommand:$/ {
            skip = index(impl, " " $3 " ") == 0
        }
        /^$/ && skip { skip = 0; next }
        skip { next }
        /^  [a-z]+ [[(]/ && index(impl, " " $1 " ") == 0 { next }
        { print }'
}
filter_want() { filter_help | filter; }

run_case() { # prog case
    eval "\"$1\" $2" </dev/null 2>&1
    echo "exit=$?"
    find . -type f -newer "$D/sub/base.raw" -o -type f -name '*.img' |
        sort | while read -r f; do stat -c '%n %s %b' "$f"; done
}

compare_cases "$qemu" "$strata" "$cases"
