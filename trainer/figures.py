"""Figures of the evaluation report, drawn with matplotlib's Agg backend."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trainer.flows import FEATURES  # noqa: E402

_LABEL_COLORS = {0: "#1f77b4", 1: "#d62728"}
_LABEL_NAMES = {0: "not AI", 1: "AI"}
_DPI = 110


def confusion_matrices(families_results, path):
    """Draw one 2x2 confusion matrix per family and model on the test split."""
    cells = [(family, name, metrics["confusion"])
             for family, results in families_results.items()
             for name, metrics in results["models"].items()]
    columns = 2
    rows = (len(cells) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6.4, 2.9 * rows), squeeze=False)
    for ax, (family, name, matrix) in zip(axes.flat, cells):
        matrix = np.array(matrix)
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > matrix.max() / 2 else "black")
        ax.set_xticks([0, 1], ["not AI", "AI"])
        ax.set_yticks([0, 1], ["not AI", "AI"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title("%s, %s" % (family.upper(), name.upper()))
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return path


def pairplot(flows, family, path, max_points=1500, seed=1):
    """Draw a scatter matrix of the five features (log10(1 + x)) coloured by label."""
    subset = flows[flows["family"] == family]
    if len(subset) > max_points:
        subset = subset.sample(max_points, random_state=seed)
    values = np.log10(1.0 + subset[list(FEATURES)].to_numpy(dtype="float64"))
    labels = subset["label"].to_numpy()
    n = len(FEATURES)
    low, high = values.min(axis=0), values.max(axis=0)
    pad = 0.05 * np.maximum(high - low, 1e-9)
    limits = list(zip(low - pad, high + pad))
    figure, axes = plt.subplots(n, n, figsize=(9, 9))
    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            for label in (0, 1):
                mask = labels == label
                if i == j:
                    ax.hist(values[mask, i], bins=30, range=limits[i], alpha=0.6,
                            color=_LABEL_COLORS[label])
                else:
                    ax.scatter(values[mask, j], values[mask, i], s=3, alpha=0.4,
                               color=_LABEL_COLORS[label], label=_LABEL_NAMES[label])
            # Every panel of a column (row) spans the same feature range, so
            # one set of tick labels serves the whole column (row).
            ax.set_xlim(limits[j])
            if i != j:
                ax.set_ylim(limits[i])
            if i == n - 1:
                ax.set_xlabel(FEATURES[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if i == j:
                ax.set_yticks([])  # a histogram's y axis counts flows
            elif j == 0 or (i == 0 and j == 1):
                ax.set_ylabel(FEATURES[i], fontsize=8)
            else:
                ax.set_yticklabels([])
            ax.tick_params(labelsize=7)
    handles, names = axes[0, 1].get_legend_handles_labels()
    figure.legend(handles, names, loc="upper right", markerscale=4)
    figure.suptitle("%s flows, log10(1 + feature), %d flows shown" % (family.upper(), len(subset)))
    figure.tight_layout(rect=(0, 0, 0.95, 0.97))
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return path


def early_detection(table, path):
    """Plot flow-level F1 against the seconds of each flow the router has seen."""
    figure, ax = plt.subplots(figsize=(6.4, 4))
    for (model, family), group in table.groupby(["model", "family"]):
        style = "-" if model == "deployment" else ":"
        ax.plot(group["T"], group["f1"], style, marker="o", label="%s, %s" % (model, family))
    ax.set_xscale("log")
    ax.set_xticks(sorted(table["T"].unique()), [str(t) for t in sorted(table["T"].unique())])
    ax.set_xlabel("seconds of the flow seen (T)")
    ax.set_ylabel("F1, AI class, per flow")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=_DPI)
    plt.close(figure)
    return path
