"""The smallest valid algorithm: writes one constant output (used by benchmarks)."""

import json

with open("/data/output/result.json", "w") as f:
    json.dump({"answer": 42}, f)
