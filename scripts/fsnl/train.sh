#!/usr/bin/env bash
# FSNL: train on OOP for each domain x shots x seed (spec §8.1); IP is evaluated by the same run. BS/LR follow the rule of spec §8.3 with C counted on disk.
# Usage: scripts/fsnl/train.sh DATA OUT [sweep options]   (or DATA=... OUT=... scripts/fsnl/train.sh)
# Optional environment: DOMAINS, SHOTS, SEEDS, CONFIG, DRY_RUN=1 (see scripts/run_sweep.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_sweep.sh" fsnl "$@"
