"""PNG plots of an inspect report, each comparing the teachers side by side.

matplotlib's object API on the Agg canvas: no display, no pyplot state, safe to call from any
thread or a headless server. `render_plots` returns {file name: PNG bytes} for the plots that
have something to show; `--plots DIR` writes them, `--html FILE` embeds them.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from distill.inspection.sections import agreement_matrices

PLOTS = {
    "confidence.png": "normalised entropy and top-1 margin of every classification teacher",
    "predicted-labels.png": "how often each teacher predicts each class",
    "mc-dropout.png": "MC-dropout entropy and mutual information, where cached",
    "lm-tokens.png": "causal-LM caches: tail mass outside the top-k and entropy per token",
    "agreement.png": "pairwise argmax agreement matrix per corpus plan",
    "disagreement.png": "distribution of the teachers' disagreement per row",
    "reliability.png": "reliability diagram (confidence vs accuracy) on the labelled rows",
}


def render_plots(report: dict) -> dict[str, bytes]:
    teachers = report["teachers"]
    classifiers = [t for t in teachers if t.get("histograms")]
    mc = [t for t in classifiers if "mc_entropy" in t["histograms"]]
    lm = [t for t in teachers if t.get("tokens", {}).get("tokens")]
    labelled = [t for t in classifiers if t.get("accuracy", {}).get("rows")]
    figures = {
        "confidence.png": classifiers and _histograms(
            classifiers, lambda t: t["histograms"],
            [("entropy", "normalised entropy H(p) / log C"), ("margin", "margin p(top-1) - p(top-2)")]),
        "predicted-labels.png": classifiers and _predicted(classifiers),
        "mc-dropout.png": mc and _histograms(
            mc, lambda t: t["histograms"],
            [("mc_entropy", "MC-dropout entropy (normalised)"),
             ("mc_mutual_info", "MC-dropout mutual information (normalised)")]),
        "lm-tokens.png": lm and _histograms(
            lm, lambda t: t["tokens"]["histograms"],
            [("tail_mass", "probability mass outside the top-k, per token"),
             ("entropy_nats", "entropy per token (nats, tail as one token)")], unit="tokens"),
        "agreement.png": report["agreement"] and _agreement(agreement_matrices(report)),
        "disagreement.png": report["disagreements"] and _disagreement(report["disagreements"]),
        "reliability.png": labelled and _reliability(labelled),
    }
    return {name: _png(fig) for name, fig in figures.items() if fig}


def loss_curve(history: list[dict], title: str) -> bytes:
    """The training loss per optimizer step (and its running mean over ~5% of the steps)."""
    fig, ax = _figure(1)
    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history], dtype=float)
    ax[0].plot(steps, loss, lw=0.8, alpha=0.5, label="loss")
    window = max(1, len(loss) // 20)
    if window > 1:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax[0].plot(steps[window - 1:], smooth, lw=1.8, label=f"mean of {window} steps")
    ax[0].set(xlabel="step", ylabel="loss", title=title)
    ax[0].legend()
    return _png(fig)


def _figure(panels: int, columns: int = 2, size: tuple[float, float] = (5.5, 3.6)):
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    fig = Figure(figsize=(size[0] * columns, size[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _histograms(teachers: list[dict], source, panels: list[tuple[str, str]], unit: str = "rows"):
    """One panel per statistic, one step line per teacher (share of its rows per bin)."""
    fig, axes = _figure(len(panels))
    for ax, (key, label) in zip(axes, panels):
        for t in teachers:
            h = source(t)[key]
            counts = np.array(h["counts"], dtype=float)
            ax.stairs(counts / max(counts.sum(), 1), h["edges"], label=t["title"], lw=1.6)
        ax.set(xlabel=label, ylabel=f"share of {unit}")
        ax.legend(fontsize="small")
    return fig


def _predicted(teachers: list[dict]):
    classes = max(len(t["predicted"]) for t in teachers)
    fig, axes = _figure(len(teachers), columns=3, size=(4.5, max(2.0, 0.8 + 0.28 * classes)))
    for ax, t in zip(axes, teachers):
        names = list(t["predicted"])
        counts = np.array([t["predicted"][n] for n in names], dtype=float)
        ax.barh(range(len(names)), counts / max(counts.sum(), 1))
        ax.set_yticks(range(len(names)), names, fontsize="small")
        ax.invert_yaxis()
        ax.set(title=t["title"], xlabel="share of predictions")
    return fig


def _agreement(matrices: list):
    side = 1.2 + 0.9 * max(len(names) for _, names, _ in matrices)
    fig, axes = _figure(len(matrices), size=(side + 1.0, side))
    for ax, (plan_id, names, matrix) in zip(axes, matrices):
        values = np.array([[np.nan if v is None else v for v in row] for row in matrix])
        image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="white" if np.isnan(v) or v < 0.6 else "black")
        ax.set_title(f"argmax agreement, plan {plan_id[:8]}")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def _disagreement(groups: list[dict]):
    fig, axes = _figure(1)
    for g in groups:
        h = g["histogram"]
        counts = np.array(h["counts"], dtype=float)
        ax_label = f"{', '.join(g['teachers'])} (plan {g['plan_id'][:8]})"
        axes[0].stairs(counts / max(counts.sum(), 1), h["edges"], label=ax_label, lw=1.6)
    axes[0].set(xlabel="teachers' mutual information per row (normalised)", ylabel="share of rows")
    axes[0].legend(fontsize="small")
    return fig


def _reliability(teachers: list[dict]):
    fig, axes = _figure(1, size=(5.5, 5.0))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for t in teachers:
        bins = [b for b in t["accuracy"]["bins"] if b["rows"]]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
                label=f"{t['title']}: accuracy {t['accuracy']['accuracy']:.3f}, "
                      f"ECE {t['accuracy']['ece']:.3f}")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="confidence (top-1 probability)",
           ylabel="accuracy", title="reliability on the labelled rows")
    ax.legend(fontsize="small", loc="upper left")
    return fig
