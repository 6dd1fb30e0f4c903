#!/bin/bash
# POPGym memory suite, five cores, seeds outer so that every cell gets seed 1 before any gets seed 2.
cd /work/snap-popgym
export PYTHONPATH=/work/snap-popgym
for s in 1 2 3; do
  /work/venv/bin/python -m brims_rl compare --env popgym-memory --cores ff lstm gru rims brims --seeds $s \
    --protocol popgym --total-steps ${STEPS:-131072} --jobs 2 --out /work/results/popgym
done
