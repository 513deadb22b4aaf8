#!/usr/bin/env bash
# TaskRes (alpha 0.5; 100 epochs up to 4 shots, 200 beyond): train on OOP (spec §3.7, §8.5).
# Usage: scripts/taskres/train.sh DATA OUT [sweep options]   (or DATA=... OUT=... scripts/taskres/train.sh)
# Optional environment: DOMAINS, SHOTS, SEEDS, CONFIG, DRY_RUN=1 (see scripts/run_sweep.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_sweep.sh" taskres "$@"
