"""Draws docs/bench.png (requests per second and p99 per configuration) from docs/bench.json."""
import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

docs = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
rows = json.loads((docs / "bench.json").read_text())["rows"]
cases = list(dict.fromkeys(r["case"] for r in rows))
fig, axes = plt.subplots(1, 2, figsize=(15, 7), sharey=True)
for ax, metric, label in ((axes[0], "rps", "requests per second (median)"), (axes[1], "p99_ms", "p99 latency, ms (median)")):
    for i, conc in enumerate(sorted({r["concurrency"] for r in rows})):
        values = []
        for case in cases:
            row = next(r for r in rows if r["case"] == case and r["concurrency"] == conc)
            values.append(statistics.median(run[metric] for run in row["runs"]))
        ys = [y + (i - 0.5) * 0.38 for y in range(len(cases))]
        ax.barh(ys, values, height=0.38, label=f"{conc} worker{'s' if conc > 1 else ' (pinned)'}")
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
axes[0].set_yticks(range(len(cases)))
axes[0].set_yticklabels(cases)
axes[0].invert_yaxis()
axes[0].legend()
fig.suptitle("Portico vs plain Envoy and Envoy's native filters")
fig.tight_layout()
fig.savefig(docs / "bench.png", dpi=110)
print(f"wrote {docs / 'bench.png'}")
