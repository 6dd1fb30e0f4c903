"""One line per core from a `brims-rl bench --json` file (for gpu_check.sh): train steps/s and peak GPU memory, or,
from the minibatch shape mode (`--minibatch`), the median forward + backward time and its ratio to a plain LSTM."""

import json
import sys

report = json.load(open(sys.argv[1]))
if "env_sps" in report:
    parts = [f"env-only {report['env_sps']:,.0f}/s"]
    for name, r in report["cores"].items():
        memory = f" {r['peak_device_mb'] / 1024:.1f}GB" if "peak_device_mb" in r else ""
        parts.append(f"{name} {r['train_sps']:,.0f}/s{memory}")
else:
    plain = report["cores"]["nn.LSTM"]["median_ms"]
    parts = [f"B={report['batch']} T={report['steps']}"]
    parts += [f"{name} {r['median_ms']:.1f}ms ({r['median_ms'] / plain:.1f}x)" for name, r in report["cores"].items()]
    parts += [f"fallback: {line}" for line in report["compile_fallbacks"]]
print(" | ".join(parts))
