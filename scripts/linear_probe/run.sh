#!/usr/bin/env bash
# Linear probe: extract CLIP features (OOP and IP, train/val/test) then fit the probe for every shot count (spec §9).
# Usage: scripts/linear_probe/run.sh DATA OUT [sweep options]   (or DATA=... OUT=... scripts/linear_probe/run.sh)
# Optional environment: DOMAINS, SHOTS, SEEDS, CONFIG, DRY_RUN=1 (see scripts/run_sweep.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_sweep.sh" linear_probe "$@"
