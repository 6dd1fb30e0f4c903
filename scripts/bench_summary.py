"""One line per core from a `brims-rl bench --json` file: train steps/s and peak GPU memory (for gpu_check.sh)."""

import json
import sys

report = json.load(open(sys.argv[1]))
parts = [f"env-only {report['env_sps']:,.0f}/s"]
for name, r in report["cores"].items():
    memory = f" {r['peak_device_mb'] / 1024:.1f}GB" if "peak_device_mb" in r else ""
    parts.append(f"{name} {r['train_sps']:,.0f}/s{memory}")
print(" | ".join(parts))
