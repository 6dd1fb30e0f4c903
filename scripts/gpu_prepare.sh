#!/usr/bin/env bash
# scripts/gpu_prepare.sh WHEEL_DIR: gather, on a machine with PyPI, the packages the GPU machine lacks (Python 3.12,
# x86-64): envpool, ale-py, gymnasium and their small dependencies. envpool's wheel (53 MB) and its assets wheel
# (62 MB) together exceed what can be sent to the GPU machine (64 MiB in all), so they are unpacked into
# WHEEL_DIR/site and trimmed to their Atari parts (~27 MB in all); the small wheels are unpacked there too.
# gpu_check.sh puts WHEEL_DIR/site on PYTHONPATH.
set -euo pipefail
dir=${1:?usage: scripts/gpu_prepare.sh WHEEL_DIR}
mkdir -p "$dir/download"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir/download" \
  envpool==1.2.5 envpool-assets==0.3.0 ale-py==0.12.1 gymnasium==1.4.0 farama-notifications==0.0.6 dm-env==1.6 \
  dm-tree==0.1.10 optree==0.20.0 types-protobuf
rm -rf "$dir/site" && mkdir -p "$dir/site"
for wheel in "$dir"/download/*.whl; do python3 -m zipfile -e "$wheel" "$dir/site"; done
cd "$dir/site"
# envpool: keep the Atari extension; its entry point imports every env family, so register Atari only.
find envpool -name "*.so" ! -path "envpool/atari/*" -delete
rm -rf envpool/vizdoom envpool/mujoco envpool/jumanji envpool_assets/{gfootball,mujoco,procgen,vizdoom}
echo "import envpool.atari.registration  # noqa: F401  (trimmed copy: Atari only)" > envpool/entry.py
du -sh .
