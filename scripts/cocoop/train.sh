#!/usr/bin/env bash
# CoCoOp: train on OOP (10 epochs, checkpoint every 10), IP evaluated by the same run (spec §8.5).
# Usage: scripts/cocoop/train.sh DATA OUT [sweep options]   (or DATA=... OUT=... scripts/cocoop/train.sh)
# Optional environment: DOMAINS, SHOTS, SEEDS, CONFIG, DRY_RUN=1 (see scripts/run_sweep.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_sweep.sh" cocoop "$@"
