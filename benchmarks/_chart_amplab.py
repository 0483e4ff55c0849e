"""Draw ``bench_amplab.py``'s chart from its JSON: ``python _chart_amplab.py RESULTS.json OUT.png``.

Run by ``bench_amplab.py`` with the python of ``benchmarks/.venv-chart`` (matplotlib), so
that the project's venv stays free of numpy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOOLS = ("lambdamr (local, 2 workers)", "duckdb (2 threads)", "python reference (1 process)")


def chart(path: Path, query_results: list[dict], scaling: list[dict]) -> None:
    """Throughput per query and tool; 2a time and peak memory against input size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 2 if scaling else 1
    fig, axes = plt.subplots(1, ncols, figsize=(7 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    names = [q["query"] for q in query_results]
    width = 0.8 / len(TOOLS)
    for i, tool in enumerate(TOOLS):
        values = [next(r["mb_per_s"] for r in q["results"] if r["tool"] == tool) for q in query_results]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=tool)
    ax.set_xticks([x + width for x in range(len(names))], names)
    ax.set_ylabel("MB/s (input / median wall time)")
    ax.set_title("Amplab queries, whole commands")
    ax.legend()
    if scaling:
        ax = axes[0][1]
        sizes = [s["size_mb"] for s in scaling]
        for tool in TOOLS[:2]:
            ax.plot(sizes, [next(r["median_s"] for r in s["results"] if r["tool"] == tool) for s in scaling],
                    marker="o", label=f"{tool}: time")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(x) for x in sizes])
        ax.set_xlabel("uservisits MB")
        ax.set_ylabel("median wall time (s)")
        ax.set_title("Amplab 2a scaling")
        mem = ax.twinx()
        mem.plot(sizes, [s.get("driver_peak_memory_mb") or 0 for s in scaling], marker="s", linestyle="--",
                 color="tab:green", label="lambdamr driver peak RSS")  # fmt: skip
        mem.plot(sizes, [max((v or 0) for v in s["task_peak_memory_mb"].values()) for s in scaling], marker="^",
                 linestyle=":", color="tab:red", label="lambdamr largest task peak RSS")  # fmt: skip
        mem.set_ylabel("MB")
        mem.set_ylim(bottom=0)
        lines, labels = ax.get_legend_handles_labels()
        more, more_labels = mem.get_legend_handles_labels()
        ax.legend(lines + more, labels + more_labels, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> int:
    report = json.loads(Path(sys.argv[1]).read_text())
    chart(Path(sys.argv[2]), report["queries"], report.get("scaling") or [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
