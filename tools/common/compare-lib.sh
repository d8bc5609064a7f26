# Sourced by tools/io/compare.sh and tools/img/compare.sh: run every case
# of a cases file through the oracle and through strata, and diff what a
# script would see.
#
# The sourcing script sets D (the scratch directory) and defines:
#   prepare              fresh scratch files in $D, before every run
#   run_case PROG CASE   run PROG (a name on PATH) inside $D with the case's
#                        arguments and print what should match, ending with
#                        the exit status
#   filter               normalise one output (stdin to stdout)
#   filter_want          the same for the oracle's output
# shellcheck shell=bash

run_one() { # prog case
    # Run by name through PATH, so that messages using argv[0] agree.
    # (Each run is in a command substitution: PATH does not pile up.)
    PATH=$(cd "$(dirname "$1")" && pwd):$PATH
    prepare
    cd "$D" || exit 1
    run_case "$(basename "$1")" "$2"
    cd - >/dev/null || exit 1
}

# compare_cases ORACLE STRATA CASES: "N passed, N failed"; fails if any did.
compare_cases() {
    local total=0 failed=0 c want got
    while IFS= read -r c; do
        [[ -z $c || $c == \#* ]] && continue
        total=$((total + 1))
        want=$(run_one "$1" "$c" | filter_want)
        got=$(run_one "$2" "$c" | filter)
        if [[ $want != "$got" ]]; then
            failed=$((failed + 1))
            echo "=== DIFF: $c"
            diff <(echo "$want") <(echo "$got") | head -40
        fi
    done < "$3"
    echo "$((total - failed)) passed, $failed failed"
    [[ $failed -eq 0 ]]
}
