#!/usr/bin/env bash
# Evaluate the models of scripts/coop/main.sh on another label space (CoOp's eval.sh, positional form):
#
#   DATA=/path/to/datasets scripts/coop/eval.sh DATASET CFG [CTP NCTX SHOTS CSC] [KEY VALUE ...]
#   e.g. DATA=data/laion_beyond scripts/coop/eval.sh Animals92_42 vit_b16 end 16 4 False
#
# CTP NCTX SHOTS CSC name the training runs to load (CoOp's eval.sh defaults: end 16 16 False) and are
# given all four or not at all. Each seed's model is read from main.sh's folder
# ${OUTPUT}/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed${SEED}
# and evaluated with DATASET.SUB_CLASSES ${SUB} into
# ${OUTPUT}/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/${DATASET}_${SUB}/seed${SEED}
# (CoOp's evaluation layout, with the evaluated label space in the dataset part).
#
# Environment: DATA (required), TRAINER (default CoOp), SUB (default IP; or All), LOAD_EPOCH (default:
# train.py's choice for --model-dir without --load-epoch), OUTPUT (default output/), SEEDS
# (default "1 2 3"), PYTHON, FORCE=1 (re-evaluate), FSNL_OVERWRITE=1 (replace an
# evaluation of another configuration). Relative paths are relative to where you call it from.
# A seed is skipped only when its folder holds a finished evaluation of this command's fingerprint (the
# loaded model's identity included: retraining MODEL_DIR makes it another evaluation); see
# scripts/run_unless_finished.sh.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: DATA=/path/to/datasets $0 DATASET CFG [CTP NCTX SHOTS CSC] [KEY VALUE ...]" >&2
    exit 2
fi
if [ -z "${DATA:-}" ]; then
    echo "error: set DATA to the dataset root, e.g. DATA=/path/to/datasets $0 $*" >&2
    exit 2
fi
DATASET=$1
CFG=$2
shift 2
CTP=end
NCTX=16
SHOTS=16
CSC=False
if [ $# -ge 1 ] && [[ "$1" != *.* ]]; then
    # CTP NCTX SHOTS CSC, all four: three of them were read as config overrides (an "odd list" error)
    if [ $# -lt 4 ] || [[ "$2" == *.* ]] || [[ "$3" == *.* ]] || [[ "$4" == *.* ]]; then
        echo "error: $0 takes CTP NCTX SHOTS CSC all four or none, before any KEY VALUE (got: $*)" >&2
        exit 2
    fi
    CTP=$1
    NCTX=$2
    SHOTS=$3
    CSC=$4
    shift 4
fi
TRAINER=${TRAINER:-CoOp}
SUB=${SUB:-IP}

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
HPARAMS=${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}
LOAD=()
if [ -n "${LOAD_EPOCH:-}" ]; then LOAD=(--load-epoch "${LOAD_EPOCH}"); fi

# shellcheck source=../run_unless_finished.sh
source scripts/run_unless_finished.sh
RUN_ELSEWHERE="set OUTPUT to another folder"

seed_list SEEDS "1 2 3"
for SEED in "${SEED_LIST[@]}"; do
    MODEL_DIR=${OUTPUT}/${DATASET}/${TRAINER}/${HPARAMS}/seed${SEED}
    DIR=${OUTPUT}/evaluation/${TRAINER}/${HPARAMS}/${DATASET}_${SUB}/seed${SEED}
    run_unless_finished "${DIR}/results.json" "${PYTHON:-python}" train.py \
        --root "${DATA}" \
        --seed "${SEED}" \
        --trainer "${TRAINER}" \
        --dataset-config-file "configs/datasets/${DATASET}.yaml" \
        --config-file "configs/trainers/${TRAINER}/${CFG}.yaml" \
        --output-dir "${DIR}" \
        --model-dir "${MODEL_DIR}" \
        "${LOAD[@]}" \
        --eval-only \
        TRAINER.COOP.N_CTX "${NCTX}" \
        TRAINER.COOP.CSC "${CSC}" \
        TRAINER.COOP.CLASS_TOKEN_POSITION "${CTP}" \
        DATASET.NUM_SHOTS "${SHOTS}" \
        DATASET.SUB_CLASSES "${SUB}" \
        "$@"
done
