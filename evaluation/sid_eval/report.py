"""Results as a markdown table (mean ± std over seeds) and a PNG bar chart of AUC by slice."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def summarize(runs: list[dict[str, float]], key: str) -> tuple[float, float]:
    vals = np.array([r[key] for r in runs], dtype=np.float64)
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def markdown(result: dict[str, Any], slices: Sequence[str]) -> str:
    info, cfg = result["info"], result["config"]
    keys = [f"auc_{s}" for s in slices] + ["ne_overall", "ne_new"]
    head = ["variant", "table rows", *[f"AUC {s}" for s in slices], "NE overall", "NE new"]
    lines = [
        (
            f"Test examples per slice: {info['slice_examples']}; {info['train_examples']} training examples; "
            f"cut {info['cut_day']}; {info['train_items']} training items, {info['new_test_items']} new test items; "
            f"L={cfg['levels']}, K={cfg['codebook_size']}, H={info['table_rows']}; seeds {list(cfg['seeds'])}; "
            f"{info['seconds']:.0f}s in all. Mean ± std over seeds; AUC higher is better, NE lower is better."
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for name, runs in result["runs"].items():
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in (summarize(runs, k) for k in keys)]
        lines.append(f"| {name} | {result['rows'][name] or 'dense'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], slices: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = list(result["runs"])
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        stats = [summarize(result["runs"][name], f"auc_{s}") for s in slices]
        x = np.arange(len(slices)) + (i - (len(names) - 1) / 2) * width
        ax.bar(x, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=name, color=cmap(i % 20), capsize=1.5)
    ax.set_xticks(np.arange(len(slices)), slices)
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    lo = min(min(r[f"auc_{s}"] for r in runs for s in slices) for runs in result["runs"].values())
    ax.set_ylim(max(0.0, lo - 0.02), None)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.legend(ncol=1, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title("Ranking AUC by item slice and item representation")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
