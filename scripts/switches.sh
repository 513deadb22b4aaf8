# Sourced by the shell wrappers: an on/off environment switch (DRY_RUN, FORCE), read one way everywhere.
#
#   if switch_on DRY_RUN; then ...
#
# 1, true, yes or on (any case) is on; unset, empty, 0, false, no or off is off; any other value stops
# the script with one error line and exit code 2. Before, only "1" was on: DRY_RUN=true ran the whole
# sweep it was asked to print.
switch_on() {
    local value="${!1:-}"
    case "${value,,}" in
        1 | true | yes | on) return 0 ;;
        "" | 0 | false | no | off) return 1 ;;
        *)
            echo "error: $1=$value is not an on/off switch; set $1=1 (on) or $1=0 (off)" >&2
            exit 2
            ;;
    esac
}

# seed_list VAR DEFAULT: the seeds in VAR (whole numbers separated by spaces; DEFAULT when VAR is unset or
# blank) into the array SEED_LIST; anything else stops the script with one error line. Before, the
# wrappers' `for SEED in ${SEEDS}` expanded SEEDS='*' to file names (train.py then refused
# `--seed README.md`, naming no SEEDS) and SEEDS='1,2' reached train.py as one seed.
seed_list() {
    local value="${!1:-}"
    if [ -z "${value//[[:space:]]/}" ]; then value=$2; fi
    read -r -a SEED_LIST <<<"$value"
    local seed
    for seed in "${SEED_LIST[@]}"; do
        if ! [[ "$seed" =~ ^-?[0-9]+$ ]]; then
            echo "error: $1='${!1}' holds '$seed', not a seed; give whole numbers separated by spaces, e.g. $1=\"1 2 3\"" >&2
            exit 2
        fi
    done
}
