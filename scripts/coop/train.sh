#!/usr/bin/env bash
# CoOp (N_CTX 4, shared context, class token at the end): train on OOP, IP evaluated by the same run (spec §8.5).
# Usage: scripts/coop/train.sh DATA OUT [sweep options]   (or DATA=... OUT=... scripts/coop/train.sh)
# Optional environment: DOMAINS, SHOTS, SEEDS, CONFIG, DRY_RUN=1 (see scripts/run_sweep.sh).
exec bash "$(dirname "${BASH_SOURCE[0]}")/../run_sweep.sh" coop "$@"
