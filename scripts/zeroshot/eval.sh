#!/usr/bin/env bash
# Zero-shot OpenCLIP: evaluate OOP (and, through cross-evaluation, IP) without training; seed 3 unless SEEDS is set (spec §8.5).
# Usage: scripts/zeroshot/eval.sh DATA OUT [sweep options]   (or DATA=... OUT=... scripts/zeroshot/eval.sh)
# Optional environment: DOMAINS, SHOTS, SEEDS, CONFIG, DRY_RUN=1 (see scripts/run_sweep.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_sweep.sh" zeroshot "$@"
