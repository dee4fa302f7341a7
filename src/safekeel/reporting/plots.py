"""PNG plots for the report, drawn with matplotlib's Agg canvas (no display, no pyplot state).

- `training_curves`: one panel per logged quantity family (loss and CE; each defence term with its
  harmful / benign split; grad norm; learning rate) against the optimizer step;
- `overview_curves`: several runs' CE on harmful and benign rows on shared axes;
- `monitor_plot`: every `monitor/*` key against the step, with rollback / warning events as vertical lines.
Every function returns PNG bytes, or None when there is nothing to draw.
"""

from __future__ import annotations

import io
import math

NOT_CURVES = {"step", "epoch", "elapsed_s", "total_flos", "train_runtime", "train_samples_per_second",
              "train_steps_per_second", "train_loss"}
LOSS_KEYS = ("loss", "ce", "ce_harmful", "ce_benign")
SPLIT_COLOURS = {"": "#1f77b4", "harmful": "#d62728", "benign": "#2ca02c"}
EVENT_STYLES = {"safety_rollback": ("#d62728", "--"), "safety_warning": ("#ff7f0e", ":"),
                "over_refusal_warning": ("#9467bd", ":")}
DPI = 90


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` over the log rows that carry both a step and a finite number for it."""
    xs, ys = [], []
    for row in rows:
        x, y = _number(row.get("step")), _number(row.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def _split(key: str) -> tuple[str, str]:
    for suffix in ("harmful", "benign"):
        if key.endswith("_" + suffix):
            return key[: -len(suffix) - 1], suffix
    return key, ""


def curve_panels(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """[(panel title, keys)] for a training log: loss and CE first, then each family of defence terms
    (a key with its `_harmful` / `_benign` twins), then grad_norm and learning_rate."""
    keys: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k not in NOT_CURVES and not k.startswith("monitor/") and _number(v) is not None:
                keys.setdefault(k)
    panels = [("loss and CE", [k for k in LOSS_KEYS if k in keys])]
    families: dict[str, list[str]] = {}
    for k in keys:
        if k in LOSS_KEYS or k in ("grad_norm", "learning_rate"):
            continue
        families.setdefault(_split(k)[0], []).append(k)
    panels += sorted(families.items())
    panels += [(k, [k]) for k in ("grad_norm", "learning_rate") if k in keys]
    return [(title, ks) for title, ks in panels if ks]


def _figure(n_panels: int, cols: int = 3, width: float = 4.2, height: float = 2.7):
    from matplotlib.figure import Figure

    cols = max(1, min(cols, n_panels))
    nrows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(width * cols, height * nrows + 0.4), dpi=DPI)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _style(ax, title: str) -> None:
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)


def _events(ax, events: list[dict]) -> None:
    seen = set()
    for ev in events:
        x = _number(ev.get("step"))
        if x is None:
            continue
        colour, style = EVENT_STYLES.get(str(ev.get("event")), ("#7f7f7f", "-."))
        label = str(ev.get("event")) if ev.get("event") not in seen else None
        seen.add(ev.get("event"))
        ax.axvline(x, color=colour, linestyle=style, linewidth=1.2, label=label)


def training_curves(rows: list[dict], title: str, events: list[dict] | None = None) -> bytes | None:
    panels = [(t, ks) for t, ks in curve_panels(rows) if any(series(rows, k)[0] for k in ks)]
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    for ax, (panel, keys) in zip(axes, panels):
        for k in keys:
            xs, ys = series(rows, k)
            if xs:
                colour = None if panel == "loss and CE" else SPLIT_COLOURS[_split(k)[1]]
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, color=colour, label=k, linewidth=1.4)
        _events(ax, events or [])
        _style(ax, panel)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


def legend_entries(axes, order: list[str]) -> tuple[list, list[str]]:
    """(handles, labels) of every labelled line on any of `axes`, once each, in `order`: a run is in the
    legend even when the first panel lacks it (a benign-only run has no CE on harmful rows)."""
    found: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            found.setdefault(label, handle)
    labels = [label for label in order if label in found]
    return [found[label] for label in labels], labels


def overview_curves(runs: list[tuple[str, list[dict]]]) -> bytes | None:
    """Several runs on shared axes: CE on harmful rows, CE on benign rows (or loss when unsplit)."""
    keys = [k for k in ("ce_harmful", "ce_benign") if any(series(rows, k)[0] for _, rows in runs)]
    keys = keys or (["loss"] if any(series(rows, "loss")[0] for _, rows in runs) else [])
    if not keys or len(runs) < 2:
        return None
    from matplotlib import colormaps

    colours, styles = colormaps["tab10"].colors, ("-", "--", ":", "-.")
    fig, axes = _figure(len(keys), cols=2, width=5.6, height=3.6)
    for ax, key in zip(axes, keys):
        for i, (label, rows) in enumerate(runs):
            xs, ys = series(rows, key)
            if xs:  # ten colours, then the same colours dashed, dotted, ...
                ax.plot(xs, ys, color=colours[i % 10], linestyle=styles[i // 10 % 4], label=label, linewidth=1.5)
        _style(ax, key)
    handles, labels = legend_entries(axes, [label for label, _ in runs])
    # as many columns as the longest label lets fit across the figure (8 pt: ~0.07 in a character, plus
    # the line sample), and the figure grows by the legend's rows, so no label is cut at the edges
    width, height = fig.get_size_inches()
    ncol = max(1, min(len(labels), int(width // (0.07 * max(map(len, labels), default=10) + 0.7))))
    legend_h = 0.17 * math.ceil(len(labels) / ncol) + 0.1
    fig.set_size_inches(width, height + legend_h)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle("training curves of all runs", fontsize=11)
    fig.tight_layout(rect=(0, legend_h / (height + legend_h), 1, 1))
    return _png(fig)


MONITOR_FIRST = ("monitor/refusal_rate", "monitor/safety_prob_first", "monitor/safety_prob_answer")
# bookkeeping of a probe, not a measurement of the model: how many prompts/answers, how long it took
MONITOR_BOOKKEEPING = ("_n", "/seconds")


def monitor_keys(rows: list[dict]) -> list[str]:
    """The `monitor/*` measurements with a number in some row: the safety measurements first, then any
    other in name order; the probe's sizes (`*_n`) and wall time (`seconds`) are not plotted."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(k for k, v in row.items() if k.startswith("monitor/") and _number(v) is not None
                                  and not k.endswith(MONITOR_BOOKKEEPING)))
    return [k for k in MONITOR_FIRST if k in keys] + sorted(k for k in keys if k not in MONITOR_FIRST)


def monitor_plot(rows: list[dict], events: list[dict], title: str) -> bytes | None:
    """Every `monitor/*` key against the step; events as vertical lines (None without monitor records)."""
    keys = monitor_keys(rows)
    if not keys:
        return None
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys):
        xs, ys = series(rows, key)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, color="#9467bd", linewidth=1.4,
                label=key.removeprefix("monitor/"))
        _events(ax, events)
        _style(ax, key.removeprefix("monitor/"))
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)
