#!/usr/bin/env bash
# GCD (spec §8.4): FSNL_openclip_GCD on the pseudo-labelled clusters of one domain, scored by clustering accuracy.
#
#   scripts/gcd/gcd_fsnl.sh SUBFIELD DATA OUT [KEY VALUE ...]
#   SUBFIELD=Pokemon DATA=... OUT=... scripts/gcd/gcd_fsnl.sh [KEY VALUE ...]
#
# SUBFIELD is the domain's folder prefix (Pokemon, Animals, ..., MiniAnimals); the clusters are read from
# DATA/<SUBFIELD>_clustering_results.json (make them with `python -m tools.cluster_names --root DATA --domain SUBFIELD`).
# C = number of distinct pseudo class names in that file; 16 shots, BS = 4*C and LR by scripts/fsnl_rule.py,
# 100 epochs, no periodic checkpoints, no captions. Trailing KEY VALUE pairs go to every train.py call.
# Environment: SEEDS (default "1"), CONFIG (FSNL_openclip config name or yaml, default vit_b16_ep200_standard),
# EPOCHS (default 100), DRY_RUN=1 (or true/yes/on: print the commands only), PYTHON (default python).
# A run is skipped only when its folder holds a finished run of the same fingerprint (scripts/run_unless_finished.sh). DATA and OUT may be relative to where you call the script from.
set -euo pipefail

if [ $# -ge 1 ] && [ -z "${SUBFIELD:-}" ]; then SUBFIELD="$1"; shift; fi
if [ $# -ge 1 ] && [ -z "${DATA:-}" ]; then DATA="$1"; shift; fi
if [ $# -ge 1 ] && [ -z "${OUT:-}" ]; then OUT="$1"; shift; fi
if [ -z "${SUBFIELD:-}" ] || [ -z "${DATA:-}" ] || [ -z "${OUT:-}" ]; then
    echo "usage: $0 SUBFIELD DATA OUT [KEY VALUE ...]   (or set SUBFIELD, DATA and OUT in the environment)" >&2
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
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PY="${PYTHON:-python}"
SHOTS=16
EPOCHS="${EPOCHS:-100}"
CONFIG="${CONFIG:-vit_b16_ep200_standard}"
case "$CONFIG" in
    *.yaml|*.yml|*/*) CONFIG_FILE="$CONFIG" ;;
    *) CONFIG_FILE="configs/trainers/FSNL_openclip/${CONFIG}.yaml" ;;
esac
JSON="$DATA/${SUBFIELD}_clustering_results.json"
if [ ! -f "$JSON" ]; then
    echo "error: $JSON not found; run: python -m tools.cluster_names --root $DATA --domain $SUBFIELD" >&2
    exit 2
fi

# The cluster count through the dataset's own reader: a malformed file is one error: line (exit 2), not a
# traceback of an ad-hoc parse (an empty list went on to a BS rule error, a dict to a TypeError).
C="$("$PY" -c 'import sys
from datasets.gcd import DatasetError, read_clustering_results
try:
    records = read_clustering_results(sys.argv[1], sys.argv[2])
except DatasetError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
print(len({name for _, name in records}))' "$JSON" "$DATA")" || exit 2
read -r BS LR < <("$PY" -c 'import sys
from scripts.fsnl_rule import format_lr, fsnl_bs_lr
bs, lr = fsnl_bs_lr(int(sys.argv[1]), int(sys.argv[2]))
print(bs, format_lr(lr))' "$C" "$SHOTS")

# shellcheck source=../run_unless_finished.sh
source scripts/run_unless_finished.sh
RUN_ELSEWHERE="set OUT to another folder"

seed_list SEEDS "1"
for SEED in "${SEED_LIST[@]}"; do
    DIR="$OUT/GCD_${SUBFIELD}/shots_${SHOTS}/train/FSNL_openclip_GCD/MEPOCH_${EPOCHS}_BS_${BS}_LR_${LR}/seed${SEED}"
    cmd=("$PY" train.py --root "$DATA" --seed "$SEED" --trainer FSNL_openclip_GCD
        --dataset-config-file configs/datasets/LAION_Beyond_GCD.yaml
        --config-file "$CONFIG_FILE"
        --output-dir "$DIR"
        DATASET.SUBFIELD "$SUBFIELD" DATASET.SUB_CLASSES OOP DATASET.NUM_SHOTS "$SHOTS"
        TRAINER.FSNL.FLE False TRAINER.FSNL.N_CTX 4 TRAINER.FSNL.CIFC True TRAINER.FSNL.USE_CAPTION False
        TRAIN.CHECKPOINT_FREQ 0 TEST.EVALUATOR ClusteringAccuracy
        OPTIM.MAX_EPOCH "$EPOCHS" OPTIM.LR "$LR" DATALOADER.TRAIN_X.BATCH_SIZE "$BS" "$@")
    if switch_on DRY_RUN; then
        printf '%q ' "${cmd[@]}"
        printf '\n'
    else
        run_unless_finished "$DIR/results.json" "${cmd[@]}"
    fi
done
