#!/usr/bin/env bash
# Shared body of the scripts/<method>/*.sh wrappers, so that each of them stays a one-liner.
#
#   scripts/<method>/<name>.sh DATA OUT [scripts.sweep options ...]
#   DATA=... OUT=... scripts/<method>/<name>.sh [scripts.sweep options ...]
#
# Environment: DOMAINS, SHOTS, SEEDS (space-separated lists), CONFIG (trainer config name or yaml),
# DRY_RUN=1 (or true/yes/on: print the pending commands instead of running them), PYTHON (default: python).
# DATA and OUT are made absolute before the script moves to the repository root, so relative paths
# mean "relative to where you called it from". Options given after DATA OUT go to scripts.sweep
# unchanged; put `--opts KEY VALUE ...` last.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 METHOD [DATA] [OUT] [sweep options...]" >&2
    exit 2
fi
METHOD="$1"
shift
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then DATA="$1"; shift; fi
if [ $# -ge 1 ] && [ "${1#-}" = "$1" ]; then OUT="$1"; shift; fi
if [ -z "${DATA:-}" ] || [ -z "${OUT:-}" ]; then
    echo "usage: scripts/${METHOD}/... DATA OUT [sweep options...]   (or set DATA and OUT in the environment)" >&2
    exit 2
fi

absolute() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}
DATA="$(absolute "$DATA")"
OUT="$(absolute "$OUT")"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=switches.sh
source scripts/switches.sh

args=(--method "$METHOD" --root "$DATA" --out "$OUT")
# Word splitting of the list variables is intended: DOMAINS="Animals Food".
# shellcheck disable=SC2206
if [ -n "${DOMAINS:-}" ]; then args+=(--domains $DOMAINS); fi
# shellcheck disable=SC2206
if [ -n "${SHOTS:-}" ]; then args+=(--shots $SHOTS); fi
# shellcheck disable=SC2206
if [ -n "${SEEDS:-}" ]; then args+=(--seeds $SEEDS); fi
if [ -n "${CONFIG:-}" ]; then args+=(--config "$CONFIG"); fi
if switch_on DRY_RUN; then args+=(--dry-run); fi

exec "${PYTHON:-python}" -m scripts.sweep "${args[@]}" "$@"
