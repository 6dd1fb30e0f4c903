#!/usr/bin/env bash
# scripts/cleanrl_parity.sh PPO_ATARI_LSTM_PY OUT [CLEANRL_VENV]
#
# CleanRL parity on Breakout: CleanRL's own, unmodified ppo_atari_lstm.py against
# `brims-rl train --env Breakout --core lstm --protocol cleanrl`, back to back, one run at a time, in the order
# cleanrl s1, brims s1, cleanrl s2, brims s2, ... Every process gets one torch thread.
#
# PPO_ATARI_LSTM_PY  CleanRL's cleanrl/ppo_atari_lstm.py, with its cleanrl_utils/ beside it (the script imports
#                    cleanrl_utils.atari_wrappers from its own folder); run with vwxyzjn/cleanrl at commit
#                    fe8d8a03c41a7ef5b523e2e354bd01c363e786bb. CleanRL's code is never part of this repo.
# OUT                output folder: OUT/cleanrl_s<N>/ and OUT/brims_s<N>/ each get the run's TensorBoard events
#                    and run.log (the exact command, start and end times, exit status, and the run's output).
# CLEANRL_VENV       a venv with torch, gymnasium 0.29, ale-py 0.9, tyro, tensorboard, numpy<2 and
#                    opencv-python-headless (default /work/cleanrl-venv).
# The brims-rl runs use `$BRIMS_PYTHON` (default: `python` on PATH, i.e. the activated venv) and the PYTHONPATH
# of the caller, so run this from the checkout to test with PYTHONPATH=$PWD.
# SEEDS (default "1 2 3") and STEPS (default 300000) can be set in the environment. A run whose run.log already
# ends with "exit 0" is skipped, so the script can be restarted after an interruption (a brims-rl run stopped
# partway is continued by hand: brims-rl train --resume OUT/brims_s<N> --total-steps STEPS).
#
# Then: python scripts/cleanrl_parity_summary.py OUT
set -uo pipefail
script=$(realpath "${1:?usage: scripts/cleanrl_parity.sh PPO_ATARI_LSTM_PY OUT [CLEANRL_VENV]}")
out=$(realpath -m "${2:?usage: scripts/cleanrl_parity.sh PPO_ATARI_LSTM_PY OUT [CLEANRL_VENV]}")
venv=$(realpath "${3:-/work/cleanrl-venv}")
seeds=${SEEDS:-1 2 3}
steps=${STEPS:-300000}
brims_python=${BRIMS_PYTHON:-python}
if [ ! -f "$script" ] || [ ! -d "$(dirname "$script")/cleanrl_utils" ]; then
  echo "no $script with cleanrl_utils/ beside it" >&2; exit 2
fi
[ -x "$venv/bin/python" ] || { echo "no python in $venv" >&2; exit 2; }
mkdir -p "$out"

# gymnasium 0.29 finds ALE's ids only after `import ale_py`; CleanRL's script does not import it, so a
# sitecustomize.py on the CleanRL runs' PYTHONPATH (theirs only) does, leaving the script unmodified.
site="$out/cleanrl_site"
mkdir -p "$site"
printf 'import ale_py  # noqa: F401  (registers ALE ids such as BreakoutNoFrameskip-v4)\n' > "$site/sitecustomize.py"

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

{
  echo "# cleanrl_parity.sh started $(date -Is) on $(hostname), $(getconf _NPROCESSORS_ONLN) cores"
  echo "# brims-rl checkout: $(git rev-parse HEAD) ($(git status --porcelain | wc -l) files changed)"
  echo "# CleanRL script: $script sha256 $(sha256sum "$script" | cut -d' ' -f1)"
  wrappers="$(dirname "$script")/cleanrl_utils/atari_wrappers.py"
  echo "# CleanRL wrappers: sha256 $(sha256sum "$wrappers" | cut -d' ' -f1)"
  packages='^(torch|gymnasium|ale-py|numpy|tyro|tensorboard|opencv-python-headless)=='
  echo "# CleanRL venv: $("$venv/bin/python" -m pip freeze 2>/dev/null | grep -iE "$packages" | tr '\n' ' ')"
  echo "# brims-rl python: $("$brims_python" -c 'import sys, torch, envpool
print(sys.executable, "torch", torch.__version__, "envpool", envpool.__version__)' 2>&1)"
  echo "# seeds: $seeds; steps: $steps"
} | tee "$out/versions.txt"

run() {  # run NAME DIR PYTHONPATH COMMAND...: run COMMAND in DIR, logging to OUT/NAME/run.log
  local name=$1 dir=$2 pypath=$3; shift 3
  local log="$out/$name/run.log"
  if [ -f "$log" ] && tail -n 1 "$log" | grep -q '^# exit 0 '; then
    echo "$(date -Is) skip $name (finished before)"; return 0
  fi
  mkdir -p "$out/$name"
  {
    echo "# command: (cd $dir && env PYTHONPATH=$pypath OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $*)"
    echo "# start $(date -Is) $(date +%s.%N)"
  } > "$log"
  echo "$(date -Is) start $name"
  (cd "$dir" && PYTHONPATH=$pypath "$@") >> "$log" 2>&1
  local rc=$?
  echo "# exit $rc end $(date -Is) $(date +%s.%N)" >> "$log"
  echo "$(date -Is) end $name exit $rc"
}

for seed in $seeds; do
  # CleanRL writes runs/<env>__ppo_atari_lstm__<seed>__<time>/ under its working folder: OUT/cleanrl_s<N>/.
  mkdir -p "$out/cleanrl_s$seed"
  run "cleanrl_s$seed" "$out/cleanrl_s$seed" "$site" \
    "$venv/bin/python" "$script" --total-timesteps "$steps" --seed "$seed" --env-id BreakoutNoFrameskip-v4
  run "brims_s$seed" "$PWD" "${PYTHONPATH:-}" \
    "$brims_python" -m brims_rl train --env Breakout --core lstm --protocol cleanrl --total-steps "$steps" \
    --seed "$seed" --set env.threads=1 --run-dir "$out/brims_s$seed"
done
echo "$(date -Is) all runs done; summary: python scripts/cleanrl_parity_summary.py $out"
