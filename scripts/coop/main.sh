#!/usr/bin/env bash
# CoOp's training script, in CoOp's positional form and output layout:
#
#   DATA=/path/to/datasets scripts/coop/main.sh DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]
#   e.g. DATA=data/laion_beyond scripts/coop/main.sh Animals92_42 vit_b16 end 16 4 False
#
# DATASET  dataset config configs/datasets/DATASET.yaml
# CFG      trainer config configs/trainers/${TRAINER}/CFG.yaml
# CTP      class token position (end, middle or front)     -> TRAINER.COOP.CLASS_TOKEN_POSITION
# NCTX     number of context tokens                        -> TRAINER.COOP.N_CTX
# SHOTS    shots per class (1, 2, 4, 8, 16)                -> DATASET.NUM_SHOTS
# CSC      class-specific context (False or True)          -> TRAINER.COOP.CSC
# Trailing KEY VALUE pairs are passed to train.py as further overrides.
#
# Environment: DATA (the dataset root, required, as CoOp's DATA=), TRAINER (default CoOp),
# OUTPUT (default output/, in the repository), SEEDS (default "1 2 3"), PYTHON (default python),
# FORCE=1 (rerun finished seeds of the same configuration), FSNL_OVERWRITE=1 (replace a finished
# run of another configuration in a seed's folder). Relative DATA/OUTPUT paths are relative to where you call it from.
#
# Runs land in ${OUTPUT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}
# (CoOp's layout). A seed is skipped only when its folder holds a finished run with the fingerprint this
# command would record (scripts/run_unless_finished.sh); a finished run of another configuration there
# stops the script with one error line. CoOp skipped any existing folder, which also skipped killed runs
# and runs of other settings.
set -euo pipefail

if [ $# -lt 6 ]; then
    echo "usage: DATA=/path/to/datasets $0 DATASET CFG CTP NCTX SHOTS CSC [KEY VALUE ...]" >&2
    exit 2
fi
if [ -z "${DATA:-}" ]; then
    echo "error: set DATA to the dataset root, e.g. DATA=/path/to/datasets $0 $*" >&2
    exit 2
fi
DATASET=$1
CFG=$2
CTP=$3
NCTX=$4
SHOTS=$5
CSC=$6
shift 6
TRAINER=${TRAINER:-CoOp}

absolute() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}
DATA="$(absolute "$DATA")"
if [ -n "${OUTPUT:-}" ]; then OUTPUT="$(absolute "$OUTPUT")"; fi
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
OUTPUT=${OUTPUT:-output}

# shellcheck source=../run_unless_finished.sh
source scripts/run_unless_finished.sh
RUN_ELSEWHERE="set OUTPUT to another folder"

seed_list SEEDS "1 2 3"
for SEED in "${SEED_LIST[@]}"; do
    DIR=${OUTPUT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}
    run_unless_finished "${DIR}/results.json" "${PYTHON:-python}" train.py \
        --root "${DATA}" \
        --seed "${SEED}" \
        --trainer "${TRAINER}" \
        --dataset-config-file "configs/datasets/${DATASET}.yaml" \
        --config-file "configs/trainers/${TRAINER}/${CFG}.yaml" \
        --output-dir "${DIR}" \
        TRAINER.COOP.N_CTX "${NCTX}" \
        TRAINER.COOP.CSC "${CSC}" \
        TRAINER.COOP.CLASS_TOKEN_POSITION "${CTP}" \
        DATASET.NUM_SHOTS "${SHOTS}" \
        "$@"
done
