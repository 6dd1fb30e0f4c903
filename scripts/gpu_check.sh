#!/usr/bin/env bash
# scripts/gpu_check.sh WHEEL_DIR OUT_DIR [SECONDS]: every GPU check of brims-rl in one run (~9 minutes on one
# H100/H200), most important first. Run from the repository root on a machine with CUDA and torch; WHEEL_DIR comes
# from gpu_prepare.sh (a site/ folder) or holds wheels. Writes OUT_DIR/summary.txt and OUT_DIR/results.tar.gz.
#  1. bench at 64 envs (Pong, default PPO) of lstm, rims and brims, with each PPO minibatch as one captured CUDA
#     graph (perf.cuda_graph_update) and without;
#  2. the CUDA tests (pytest -m cuda): the RIMs/BRIMs sequence path and the packed LSTM/GRU against the CPU,
#     exact replays, captured policy steps and minibatches;
#  3. bench --minibatch 8,256: forward + backward of POPGym's minibatch per core;
#  4. the replay check on real Atari rollouts with compiled cores (top-k selections and log-probs equal);
#  5. a profile of one BRIMs update (scripts/profile_update.py) and a one-GPU torchrun (NCCL);
#  6. with LEARN=1, learning runs (Breakout and Pong, 8 envs) in the background, paused while anything is timed,
#     stopped with Ctrl-C a minute before the deadline.
set -uo pipefail
wheels=${1:?usage: scripts/gpu_check.sh WHEEL_DIR OUT_DIR [SECONDS]}
out=${2:?usage: scripts/gpu_check.sh WHEEL_DIR OUT_DIR [SECONDS]}
budget=${3:-540}  # seconds for everything; learning runs (if LEARN=1) use what the checks leave
start=$(date +%s)
deadline=$(( start + budget - 25 ))
work=$(mktemp -d)
mkdir -p "$out" "$work/logs" "$work/json" "$work/runs"
if [ -d "$wheels/site" ]; then
  export PYTHONPATH="$(cd "$wheels/site" && pwd):$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$wheels"/*.whl || exit 1
  export PYTHONPATH="$work/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="$work/inductor"
py=python3
dev=${DEVICE:-cuda} n=${NUM_ENVS:-64}  # DEVICE=cpu NUM_ENVS=4 EXTRA="--set ..." smoke-tests this script on a CPU
read -r -a extra <<< "${EXTRA:-}"
elapsed() { echo $(( $(date +%s) - start )); }
log() { echo "[$(elapsed)s] $*" | tee -a "$out/summary.txt"; }

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $py -c "import torch, envpool, ale_py, gymnasium, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| envpool', envpool.__version__, '| ale-py', ale_py.__version__, '| gymnasium', gymnasium.__version__, '| numpy', numpy.__version__)"
  nproc; } 2>&1 | tee "$work/logs/versions.txt" | tee -a "$out/summary.txt"

# 5 (start): learning runs, 8 envs each, one CPU thread each; paused (SIGSTOP) while anything is timed.
pids=()
if [ "${LEARN:-0}" = 1 ]; then
  for game in Breakout Pong; do
    for spec in "ff:ff:default" "lstm:lstm:default" "lstm-cleanrl:lstm:cleanrl" "brims:brims:default"; do
      IFS=: read -r name agent protocol <<< "$spec"
      OMP_NUM_THREADS=1 $py -m brims_rl train --env "$game" --agent "$agent" --protocol "$protocol" --seed 1 \
        --total-steps 10000000 --device "$dev" --set env.threads=1 "${extra[@]}" \
        --run-dir "$work/runs/${game}__${name}__gpu" > "$work/logs/learn_${game}_${name}.log" 2>&1 &
      pids+=($!)
    done
  done
  log "learning runs started: ${#pids[@]}"
fi
pause_learning() { [ ${#pids[@]} -gt 0 ] && kill -STOP "${pids[@]}" 2>/dev/null; sleep 1; }
resume_learning() { [ ${#pids[@]} -gt 0 ] && kill -CONT "${pids[@]}" 2>/dev/null; }

# Steps in order of importance; each gets at most its own limit and what is left before the deadline.
limit() { local left=$(( deadline - $(date +%s) )); [ "$1" -lt "$left" ] && echo "$1" || echo $(( left > 5 ? left : 5 )); }
pause_learning
bench() {  # bench NAME ARGS...: one bench run, timed alone (the learning runs are paused)
  local name=$1; shift
  timeout "$(limit 200)" $py -m brims_rl bench --device "$dev" --num-envs "$n" --updates 3 --json "$@" "${extra[@]}" \
    > "$work/json/bench_${name}.json" 2> "$work/logs/bench_${name}.log"
  log "bench $name: exit $? | $($py scripts/bench_summary.py "$work/json/bench_${name}.json" 2>&1 | tail -n 1)"
}
replay() {  # replay NAME AGENT ROLLOUTS ARGS...
  local name=$1 agent=$2 rollouts=$3; shift 3
  timeout "$(limit 150)" $py scripts/replay_check.py --env Breakout --agent "$agent" --device "$dev" --num-envs "$n" \
    --rollouts "$rollouts" "$@" "${extra[@]}" > "$work/json/replay_${name}.json" 2> "$work/logs/replay_${name}.log"
  log "replay $name: exit $? | $(tail -n 1 "$work/json/replay_${name}.json" | cut -c1-600)"
}
# 1. speed at 64 envs: the update of the modular cores with and without one captured graph per minibatch
bench presets --cores lstm rims brims
bench graph_update --cores lstm rims brims --set perf.cuda_graph_update=true
resume_learning
# 2. the CUDA tests
timeout "$(limit 240)" $py -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider > "$work/logs/cuda_tests.log" 2>&1
log "cuda tests: exit $? | $(tail -n 1 "$work/logs/cuda_tests.log")"
pause_learning
# 3. POPGym's minibatch shape, forward + backward per core
timeout "$(limit 150)" $py -m brims_rl bench --minibatch 8,256 --device "$dev" --cores lstm gru rims brims --json \
  "${extra[@]}" > "$work/json/bench_minibatch.json" 2> "$work/logs/bench_minibatch.log"
log "bench minibatch 8,256: exit $? | $($py scripts/bench_summary.py "$work/json/bench_minibatch.json" 2>&1 | tail -n 1)"
# 4. the replay check, compiled core, default settings
replay brims brims 2
replay brims_graph_update brims 2 --set perf.cuda_graph_update=true
# 5. where BRIMs' update spends its time, and a one-GPU torchrun
timeout "$(limit 90)" $py scripts/profile_update.py --agent brims --device "$dev" --num-envs "$n" "${extra[@]}" \
  > "$work/logs/profile_brims.txt" 2>&1
log "profile brims update: exit $? | $(grep -a '^update' "$work/logs/profile_brims.txt")"
resume_learning
timeout "$(limit 90)" $py -m torch.distributed.run --standalone --nproc-per-node 1 -m brims_rl train --env Pong \
  --core lstm --device "$dev" --num-envs "$n" --total-steps 32768 "${extra[@]}" --run-dir "$work/runs/torchrun" \
  > "$work/logs/torchrun.log" 2>&1
log "torchrun 1 GPU: exit $? | $(grep -a 'brims-rl:' "$work/logs/torchrun.log" | tail -n 2 | tr '\n' ' ')"

# 5 (end): let the learning runs use what is left, then stop them cleanly (Ctrl-C writes a checkpoint).
if [ ${#pids[@]} -gt 0 ]; then
  left=$(( deadline - 60 - $(date +%s) ))
  [ "$left" -gt 0 ] && sleep "$left"
  kill -INT "${pids[@]}" 2>/dev/null
  for pid in "${pids[@]}"; do timeout 40 tail --pid="$pid" -f /dev/null; done
  for f in "$work"/logs/learn_*.log; do log "$(basename "$f"): $(tr '\r' '\n' < "$f" | grep -a '^step' | tail -n 1)"; done
fi
find "$work/runs" -name "*.pt" -delete  # checkpoints are too large to bring back; events and config.json stay
tar -czf "$out/results.tar.gz" -C "$work" logs json runs
log "done in $(elapsed)s; results.tar.gz $(du -h "$out/results.tar.gz" | cut -f1)"
