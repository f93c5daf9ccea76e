"""PNG versions of the pipeline's plots, rendered from the CSVs the stages write.

`dvc plots show/diff` HTML loads vega from a CDN and renders nothing offline; these PNGs
open anywhere, are declared as DVC image plots, and are logged to MLflow. Matplotlib's
object API (no pyplot): no global state, no GUI backend."""
from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

from .io import atomic_path

# order of the confusion axes; parse_error is a prediction only
_CLASSES = ("benign", "harmful", "parse_error")
_MODELS = ("baseline", "finetuned")


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _save(fig, png) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        # no date in the metadata: the same CSV gives the same bytes
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    return Path(png)


def loss_curve(csv_path, png_path) -> Path:
    """Training loss per optimizer step (train_rsft's `step,loss,...` CSV)."""
    from matplotlib.figure import Figure

    rows = _rows(csv_path)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], marker="o" if len(rows) < 40 else None)
    ax.set(xlabel="step", ylabel="training loss", title=f"R-SFT training loss ({len(rows)} steps)")
    ax.grid(alpha=0.3)
    return _save(fig, png_path)


def confusion(csv_path, png_path) -> Path:
    """Sample-level confusion (actual benign/harmful vs predicted), baseline beside fine-tuned."""
    from matplotlib.figure import Figure

    counts: dict[str, Counter] = defaultdict(Counter)
    for r in _rows(csv_path):
        counts[r["model"]][(r["actual"], r["predicted"])] += 1
    models = [m for m in _MODELS if m in counts] + sorted(set(counts) - set(_MODELS))
    fig = Figure(figsize=(4.2 * len(models), 3.6))
    actual = _CLASSES[:2]
    for i, model in enumerate(models):
        ax = fig.add_subplot(1, len(models), i + 1)
        grid = [[counts[model][(a, p)] for p in _CLASSES] for a in actual]
        ax.imshow(grid, cmap="Blues", vmin=0, vmax=max(1, max(max(row) for row in grid)))
        for y, row in enumerate(grid):
            for x, n in enumerate(row):
                ax.text(x, y, str(n), ha="center", va="center")
        ax.set_xticks(range(len(_CLASSES)), labels=list(_CLASSES))
        ax.set_yticks(range(len(actual)), labels=list(actual))
        ax.set(xlabel="predicted", ylabel="actual", title=model)
    return _save(fig, png_path)


def per_policy_f1(csv_path, png_path) -> Path:
    """Per-policy F1, one bar per model."""
    from matplotlib.figure import Figure

    rows = _rows(csv_path)
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    models = [m for m in _MODELS if any(r["model"] == m for r in rows)] + \
        sorted({r["model"] for r in rows} - set(_MODELS))
    f1 = {(r["policy"], r["model"]): float(r["f1"]) for r in rows}
    fig = Figure(figsize=(6, 0.3 * len(policies) * max(1, len(models)) + 1.2))
    ax = fig.add_subplot()
    height = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        bars = ax.barh([i + j * height for i in range(len(policies))], [f1.get((q, model), 0.0) for q in policies],
                       height=height, label=model)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize=8)  # a zero F1 stays readable
    ax.set_yticks([i + height * (len(models) - 1) / 2 for i in range(len(policies))], labels=policies)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="F1", title="per-policy F1")
    ax.legend(loc="lower right")
    return _save(fig, png_path)


def pr_curve(csv_path, png_path) -> Path:
    """Precision against recall of the fine-tuned model's harmful score (evaluate's pr_curve CSV)."""
    from matplotlib.figure import Figure

    rows = _rows(csv_path)
    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.plot([float(r["recall"]) for r in rows], [float(r["precision"]) for r in rows], drawstyle="steps-post")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title="precision-recall (harmful, max P(UNSAFE))")
    ax.grid(alpha=0.3)
    return _save(fig, png_path)


def render_eval(plots_dir) -> list[Path]:
    """confusion.png and per_policy_f1.png beside evaluate's CSVs."""
    d = Path(plots_dir)
    return [confusion(d / "confusion.csv", d / "confusion.png"),
            per_policy_f1(d / "per_policy_f1.csv", d / "per_policy_f1.png")]
