#!/usr/bin/env bash
# scripts/cpu_learning_runs.sh RUNS_DIR: the CPU learning runs behind the README's "Results" (one seed each,
# 8 envs, one torch thread and one env thread per run, all four at once on a 2-core machine). Stop them with
# Ctrl-C (kill -INT): each writes a checkpoint and can be continued with `brims-rl train --resume RUN`.
# Then: brims-rl compare RUNS_DIR/* --out docs/results
set -euo pipefail
runs=${1:?usage: scripts/cpu_learning_runs.sh RUNS_DIR}
mkdir -p "$runs"
launch() {  # launch NAME GAME CORE [train args...]
  local name=$1 game=$2 core=$3; shift 3
  OMP_NUM_THREADS=1 nohup brims-rl train --env "$game" --core "$core" --seed 1 --total-steps 1000000 \
    --set env.threads=1 --run-dir "$runs/$name" "$@" > "$runs/$name.log" 2>&1 &
}
launch breakout_ff Breakout ff
launch breakout_lstm Breakout lstm
launch breakout_brims Breakout brims
launch breakout_lstm_cleanrl Breakout lstm --protocol cleanrl
