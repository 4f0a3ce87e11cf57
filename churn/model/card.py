"""A model card: the figures and plots a reviewer needs to trust (or reject) a model.

``write_plots`` draws ROC, calibration (reliability) and feature-importance plots
of a model on its validation window as PNG files next to the model in the registry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_plots(model, X_val, y_val, out_dir: Path, top_features: int = 15) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    p = model.predict(X_val)
    y = np.asarray(y_val)
    written = []

    def against_diagonal(name, xs, ys, style, diagonal, labels, title, legend_at):
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(xs, ys, style, label="model")
        ax.plot([0, 1], [0, 1], "--", color="grey", label=diagonal)
        ax.set(xlabel=labels[0], ylabel=labels[1], title=title)
        ax.legend(loc=legend_at)
        save(fig, name)

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written.append(name)

    fpr, tpr, _ = roc_curve(y, p)
    against_diagonal("roc.png", fpr, tpr, "-", "chance", ("false positive rate", "true positive rate"),
                     "ROC (validation window)", "lower right")
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    filled = [b for b in range(10) if (which == b).any()]
    against_diagonal("calibration.png", [p[which == b].mean() for b in filled], [y[which == b].mean() for b in filled],
                     "o-", "perfect", ("predicted churn probability", "observed churn rate"), "Calibration",
                     "upper left")

    contrib = np.abs(model.contributions(X_val)[:, :-1]).mean(axis=0)
    order = np.argsort(contrib)[::-1][:top_features][::-1]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.barh([model.features[i] for i in order], contrib[order])
    ax.set(xlabel="mean |contribution| to log-odds", title="Feature importance")
    save(fig, "importance.png")
    return written


def importance(model, X_val, top: int = 15) -> list[dict]:
    """Features by mean absolute contribution on the validation window."""
    contrib = np.abs(model.contributions(X_val)[:, :-1]).mean(axis=0)
    order = np.argsort(contrib)[::-1][:top]
    return [{"feature": model.features[i], "mean_abs_contribution": round(float(contrib[i]), 4)} for i in order]
