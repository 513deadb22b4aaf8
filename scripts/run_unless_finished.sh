# Sourced by the shell wrappers (scripts/coop/main.sh, scripts/coop/eval.sh, scripts/gcd/gcd_fsnl.sh):
# the sweep's skip rule for one train.py command, in one place.
#
#   run_unless_finished DONE CMD [ARG ...]
#
# DONE is the job's results.json. When it holds a finished run with the fingerprint CMD would record,
# the job is skipped (one "skip:" line); when there is none, CMD runs; when a *different* finished run
# is in the way (another config, other weights, another split file), the script stops with one
# "error:" line naming the differing keys (python -m scripts.run_identity decides all three). FORCE=1
# runs CMD without asking (train.py still refuses a folder that holds another configuration's run).
# Call it from the repository root, where CMD's relative paths are resolved.
run_unless_finished() {
    local done=$1
    shift
    if [ "${FORCE:-0}" != "1" ]; then
        local rc=0
        "${PYTHON:-python}" -m scripts.run_identity --done "$done" --cmd "$(printf '%q ' "$@")" || rc=$?
        case $rc in
            0) return 0 ;;
            1) ;;
            *) exit "$rc" ;;
        esac
    fi
    "$@"
}
