# Sourced by the shell wrappers (scripts/coop/main.sh, scripts/coop/eval.sh, scripts/gcd/gcd_fsnl.sh):
# the sweep's skip rule for one train.py command, in one place.
#
#   run_unless_finished DONE CMD [ARG ...]
#
# DONE is the job's results.json. When it holds a finished run with the fingerprint CMD would record,
# the job is skipped (one "skip:" line); when there is none, CMD runs; when a *different* finished run
# is in the way (another config, other weights, another split file), the script stops with one
# "error:" line naming the differing keys (python -m scripts.run_identity decides all three; a CMD that
# cannot run, e.g. a bad --load-epoch, runs and says so itself, once). CMD's words are handed over one
# by one: a line quoted with printf %q ($'...' for a non-ASCII path under LC_ALL=C) was not read back
# as the same words, and the script's own finished run was refused. FORCE=1 runs CMD without asking
# (train.py still refuses a folder that holds another configuration's run); FSNL_OVERWRITE=1 replaces
# such a run. RUN_ELSEWHERE, set by the caller, says how its user picks another output folder.
# Call it from the repository root, where CMD's relative paths are resolved.
# shellcheck source=switches.sh
source scripts/switches.sh

run_unless_finished() {
    local done=$1
    shift
    # nothing at DONE: nothing to skip or protect, so no Python start-up (seconds of imports per seed)
    if ! switch_on FORCE && { [ -e "$done" ] || [ -L "$done" ]; }; then
        local rc=0
        "${PYTHON:-python}" -m scripts.run_identity --done "$done" \
            --elsewhere "${RUN_ELSEWHERE:-give the command another output directory}" \
            --force-hint "FSNL_OVERWRITE=1" -- "$@" || rc=$?
        case $rc in
            0) return 0 ;;
            1) ;;
            *) exit "$rc" ;;
        esac
    fi
    "$@"
}
