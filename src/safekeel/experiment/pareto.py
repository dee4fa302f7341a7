"""pareto.png: ASR against task accuracy, one point per (method, harmful ratio, learning rate) and dataset,
the mean over seeds with the seeds' standard deviation as error bars; the initial model is a black star.

Lower-right is better (accurate and safe). One panel per dataset. Colour = method, marker = harmful
ratio, a hollow marker = a learning rate other than the method's first. Drawn with matplotlib's Agg
canvas directly (no pyplot, so no global backend is changed and no display is needed).
"""

from __future__ import annotations

from pathlib import Path

from safekeel.experiment.tables import INITIAL, fmt_lr, groups, mean_std

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
OUTSIDE_LEGEND = 6  # legend entries that still fit inside the axes without hiding points


def points(rows: list[dict]) -> list[dict]:
    """One dict per plotted point: dataset, method, label, harmful_ratio, learning_rate, n (seeds), x/y
    (task accuracy / ASR in %, means) and xerr/yerr (their std in %, 0 with one seed). Groups without
    both numbers are left out."""
    out = []
    for (dataset, ratio, method, lr), group in groups(rows):
        (x, xs, nx), (y, ys, ny) = (mean_std([r.get("task_accuracy") for r in group]),
                                    mean_std([r.get("asr") for r in group]))
        if not nx or not ny:
            continue
        label = "initial model" if method == INITIAL else str(group[0].get("label") or method)
        out.append({"dataset": dataset, "method": method, "label": label, "harmful_ratio": ratio,
                    "learning_rate": lr, "n": len(group), "x": 100 * x, "y": 100 * y,
                    "xerr": 100 * (xs or 0.0), "yerr": 100 * (ys or 0.0)})
    return out


def _legend(p: dict, vary_ratio: bool, vary_lr: bool) -> str:
    if p["method"] == INITIAL:
        return "initial model"
    parts = [p["label"]]
    if vary_ratio:
        parts.append(f"r {p['harmful_ratio']:g}")
    if vary_lr:
        parts.append(f"lr {fmt_lr(p['learning_rate'])}")
    return " · ".join(parts)


def plot(rows: list[dict], path: str | Path, title: str | None = None) -> list[dict]:
    """Draw pareto.png (written atomically) and return the plotted points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pts = points(rows)
    datasets = list(dict.fromkeys(p["dataset"] for p in pts)) or ["(no finished cells)"]
    trained = [p for p in pts if p["method"] != INITIAL]
    ratios = list(dict.fromkeys(p["harmful_ratio"] for p in trained))
    methods = list(dict.fromkeys(p["method"] for p in trained))
    first_lr = {m: next(p["learning_rate"] for p in trained if p["method"] == m) for m in methods}
    vary_ratio = len(ratios) > 1
    vary_lr = len({p["learning_rate"] for p in trained}) > 1
    # a long legend (a grid's many defences) goes right of the axes: inside, it hides points
    outside = len({_legend(p, vary_ratio, vary_lr) for p in pts}) > OUTSIDE_LEGEND
    fig = Figure(figsize=((6.5 + 3.0 * outside) * len(datasets), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    palette = [f"C{i}" for i in range(10)]
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        for p in (q for q in pts if q["dataset"] == dataset):
            if p["method"] == INITIAL:
                style = {"marker": "*", "color": "black", "markersize": 14}
            else:
                colour = palette[methods.index(p["method"]) % len(palette)]
                hollow = p["learning_rate"] != first_lr[p["method"]]
                style = {"marker": MARKERS[ratios.index(p["harmful_ratio"]) % len(MARKERS)], "color": colour,
                         "markersize": 8, "markerfacecolor": "white" if hollow else colour}
            ax.errorbar(p["x"], p["y"], xerr=p["xerr"] or None, yerr=p["yerr"] or None, linestyle="none",
                        capsize=3, label=_legend(p, vary_ratio, vary_lr), **style)
        ax.set_xlabel("task accuracy (%)")
        ax.set_ylabel("attack success rate (%)")
        ax.set_title(str(dataset))
        ax.grid(True, alpha=0.3)
        if pts:
            ax.legend(fontsize="small", **({"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0}
                                           if outside else {"loc": "best"}))
        else:
            ax.text(0.5, 0.5, "no finished cells", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # written whole, then renamed (the grid directory is locked)
    fig.savefig(tmp, format="png", dpi=120)
    tmp.replace(path)
    return pts
