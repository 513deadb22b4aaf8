#!/usr/bin/env bash
# CLIP-Adapter: train on OOP, IP evaluated by the same run (spec §8.5).
# Usage: scripts/clip_adapter/train.sh DATA OUT [sweep options]   (or DATA=... OUT=... scripts/clip_adapter/train.sh)
# Optional environment: DOMAINS, SHOTS, SEEDS, CONFIG, DRY_RUN=1 (see scripts/run_sweep.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_sweep.sh" clip_adapter "$@"
