"""Fit and evaluate the per-family models and the deployment model.

Per family (ws, wss, mcp) this reproduces the paper configuration
(Privacy-preserving detection of encrypted AI traffic in IoT using
lightweight flow-level machine learning, WJARR 27(01), 2025): min-max scaled
features, LogisticRegression (liblinear, L2) and RandomForest (100 trees,
max_depth 20, gini), a stratified 80/20 split and 5-fold stratified
cross-validation. Cross-validation runs on the 80 % training part only, so
the 20 % test part is touched once, by the final scoring.

The deployment model is one RandomForest over all families, chosen under a
size budget: the forest with the fewest nodes whose cross-validated F1 is
within ``DEPLOY_F1_MARGIN`` of the paper-size forest on the same data.

It is trained on what the router scores, not on finished flows: the router
scores a live flow at every poll where its conntrack counters moved and
flags it the first time the model says AI. So its training rows are those
poll views, replayed from the capture's conntrack trace through the
runtime's own flow table, and its F1 is measured per flow with the same
flag-once rule. Without a trace it falls back to the finished flows.
"""

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
from sklearn.model_selection import StratifiedKFold, cross_val_score, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler

from aiflowd.main import OPTIONS as RUNTIME_OPTIONS
from trainer import ctflows
from trainer import flows as flowschema
from trainer.labels import TIME_SLACK, TUPLE

log = logging.getLogger(__name__)

TEST_SIZE = 0.2
CV_FOLDS = 5

# Forest sizes tried for deployment, (n_estimators, max_depth); the paper
# size (100, 20) is the reference they are held against.
DEPLOY_GRID = [(n, d) for n in (5, 10, 20, 40) for d in (4, 6, 8, 10, 12)]
DEPLOY_REFERENCE = (100, 20)
# Largest drop in cross-validated F1 (AI class) accepted for a smaller forest.
DEPLOY_F1_MARGIN = 0.01

# The runtime's scoring gate: a flow is scored once it has this many packets
# and is this many seconds old. The training views use the same gate.
MIN_PACKETS = RUNTIME_OPTIONS["min-packets"][1]
MIN_DURATION = RUNTIME_OPTIONS["min-duration"][1]


def paper_models(seed):
    """Return the paper's two model configurations, each behind a min-max scaler."""
    return {
        "lr": Pipeline([("scale", MinMaxScaler()),
                        ("clf", LogisticRegression(solver="liblinear"))]),
        "rf": Pipeline([("scale", MinMaxScaler()),
                        ("clf", RandomForestClassifier(n_estimators=100, max_depth=20,
                                                       criterion="gini", random_state=seed,
                                                       n_jobs=2))]),
    }


def load_flows(paths):
    """Read and concatenate labeled flow CSVs; return (flows, data id)."""
    digest = hashlib.sha256()
    tables = []
    for path in paths:
        path = Path(path)
        table = flowschema.read_flows(path)
        digest.update(path.read_bytes())
        table["flows_file"] = str(path)
        tables.append(table)
    flows = pd.concat(tables, ignore_index=True)
    unknown = flows["label"] == flowschema.UNKNOWN_LABEL
    if unknown.any():
        log.warning("dropping %d flows without a label", int(unknown.sum()))
        flows = flows[~unknown].reset_index(drop=True)
    return flows, "sha256:" + digest.hexdigest()


def find_trace(flows_path):
    """Return the conntrack trace recorded with a capture's flows.csv, or None."""
    folder = Path(flows_path).parent
    for name in ("conntrack.trace", "conntrack.trace.gz"):
        if (folder / name).exists():
            return folder / name
    return None


def runtime_views(flows):
    """Return the poll views of the labeled flows, as the router scores them.

    One row for every poll at which a flow's counters moved and the flow
    passed the runtime's scoring gate, with ``flow`` (the row index in
    ``flows``), the five features, ``age`` and ``label``. Returns None when
    some flows file has no conntrack trace next to it.
    """
    parts = []
    for flows_file, group in flows.groupby("flows_file", sort=False):
        trace = find_trace(flows_file)
        if trace is None:
            log.warning("no conntrack trace next to %s", flows_file)
            return None
        polls = ctflows.polls_from_trace(trace)
        keyed = group[TUPLE + ["first_seen", "last_seen", "label"]].reset_index(names="flow")
        rows = polls.merge(keyed, on=TUPLE)
        # A reused client port gives two flows the same 5-tuple; a poll
        # belongs to the flow whose time span contains it.
        rows = rows[(rows["time"] >= rows["first_seen"] - TIME_SLACK)
                    & (rows["time"] <= rows["last_seen"] + TIME_SLACK + 1.0)]
        parts.append(rows)
    views = pd.concat(parts, ignore_index=True)
    gate = ((views["c_to_s_pkts"] + views["s_to_c_pkts"] >= MIN_PACKETS)
            & (views["age"] >= MIN_DURATION))
    return views[gate].reset_index(drop=True)


def split(flows, seed, stratify_by=("label",)):
    """Return (train, test) row indices of a stratified 80/20 split."""
    strata = flows[list(stratify_by)].astype(str).agg("/".join, axis=1)
    return train_test_split(np.arange(len(flows)), test_size=TEST_SIZE, stratify=strata,
                            random_state=seed)


def class_metrics(y_true, y_pred):
    """Return accuracy and per-class precision, recall, F1 and support.

    Precision is None for a class that was never predicted, and recall None
    for a class with no flows: a rate of nothing is not 0. F1 is then 0.
    """
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], zero_division=0)
    confusion = confusion_matrix(y_true, y_pred, labels=[0, 1])
    predicted = confusion.sum(axis=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Rows are true labels 0 and 1, columns predicted labels 0 and 1.
        "confusion": confusion.tolist(),
        "classes": {
            str(label): {"precision": float(precision[i]) if predicted[i] else None,
                         "recall": float(recall[i]) if support[i] else None,
                         "f1": float(f1[i]), "support": int(support[i])}
            for i, label in enumerate((0, 1))
        },
    }


def format_metric(value, digits=3):
    """Format a rate for a report table, with ``n/a`` where it is undefined (None)."""
    return "n/a" if value is None else "%.*f" % (digits, value)


def evaluate_family(flows, family, seed):
    """Fit and score the paper models on one family; return (results, fitted models)."""
    subset = flows[flows["family"] == family].reset_index(drop=True)
    counts = subset["label"].value_counts()
    if len(counts) < 2 or counts.min() < CV_FOLDS:
        raise ValueError("family %r has %s flows per label; each label needs at least %d "
                         "for %d-fold cross-validation" % (family, counts.to_dict(),
                                                           CV_FOLDS, CV_FOLDS))
    X = flowschema.feature_matrix(subset)
    y = subset["label"].to_numpy()
    train, test = split(subset, seed)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    results = {"flows": int(len(subset)), "train": int(len(train)), "test": int(len(test)),
               "labels": {str(k): int(v) for k, v in counts.sort_index().items()},
               "models": {}}
    fitted = {}
    for name, model in paper_models(seed).items():
        cv = cross_val_score(clone(model), X[train], y[train], cv=folds, scoring="f1")
        model.fit(X[train], y[train])
        metrics = class_metrics(y[test], model.predict(X[test]))
        metrics["cv_f1_folds"] = [float(v) for v in cv]
        metrics["cv_f1_mean"] = float(cv.mean())
        metrics["cv_f1_std"] = float(cv.std())
        results["models"][name] = metrics
        fitted[name] = model
        log.info("%s %s: accuracy %.3f, F1 (AI) %.3f, CV F1 %.3f +- %.3f", family, name,
                 metrics["accuracy"], metrics["classes"]["1"]["f1"], cv.mean(), cv.std())
    return results, fitted


def forest_nodes(forest):
    return int(sum(tree.tree_.node_count for tree in forest.estimators_))


def flow_level_f1(views, flagged_rows, flow_labels):
    """F1 of the AI class when a flow counts as flagged if any of its rows is."""
    flagged = views.loc[flagged_rows, "flow"].unique()
    predicted = np.isin(flow_labels.index.to_numpy(), flagged).astype(int)
    return precision_recall_fscore_support(flow_labels.to_numpy(), predicted, labels=[1],
                                           zero_division=0)[2][0]


def _fit_views(forest, views):
    # Each flow weighs the same, however many polls it spans.
    weights = 1.0 / views.groupby("flow")["flow"].transform("size").to_numpy()
    return forest.fit(flowschema.feature_matrix(views), views["label"].to_numpy(),
                      sample_weight=weights)


def select_deployment(views, flow_labels, seed, grid=DEPLOY_GRID, reference=DEPLOY_REFERENCE,
                      margin=DEPLOY_F1_MARGIN):
    """Pick the smallest forest within ``margin`` CV F1 of the reference size.

    ``views`` are the training flows' poll views, ``flow_labels`` the label
    of each training flow (indexed like ``views["flow"]``). Returns (chosen forest
    configuration, table of every candidate). Forests are fitted on raw
    features: min-max scaling cannot change which split a tree picks, and
    raw features let the router score counters as they are.
    """
    # Folds split flows, not rows, so no flow has polls on both sides, and a
    # flow that never passed the scoring gate still counts (as not flagged).
    flow_ids = flow_labels.index.to_numpy()
    folds = [(flow_ids[fit], flow_ids[check]) for fit, check in
             StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
             .split(flow_ids, flow_labels.to_numpy())]
    rows = []
    for n_estimators, max_depth in [reference] + list(grid):
        scores = []
        for fit_flows, check_flows in folds:
            forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                            criterion="gini", random_state=seed, n_jobs=2)
            _fit_views(forest, views[views["flow"].isin(fit_flows)])
            check = views[views["flow"].isin(check_flows)]
            hits = forest.predict(flowschema.feature_matrix(check)) == 1
            scores.append(flow_level_f1(check, check.index[hits], flow_labels.loc[check_flows]))
        forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth,
                                        criterion="gini", random_state=seed, n_jobs=2)
        nodes = forest_nodes(_fit_views(forest, views))
        rows.append({"n_estimators": n_estimators, "max_depth": max_depth,
                     "cv_f1_mean": float(np.mean(scores)), "cv_f1_std": float(np.std(scores)),
                     "nodes": nodes})
        log.info("deployment candidate %d trees, depth %d: CV flow F1 %.4f, %d nodes",
                 n_estimators, max_depth, np.mean(scores), nodes)
    reference_f1 = rows[0]["cv_f1_mean"]
    eligible = [row for row in rows[1:] if row["cv_f1_mean"] >= reference_f1 - margin]
    chosen = min(eligible, key=lambda row: row["nodes"]) if eligible else rows[0]
    return chosen, rows


def deployment_split(flows, seed):
    """Return (train, test) flow indices of the deployment model's split."""
    return split(flows, seed, stratify_by=("family", "label"))


def train_deployment(flows, seed, views=None):
    """Choose and fit the deployment forest on all families.

    ``views`` are the flows' runtime views when the caller has them already.
    Returns (forest, results, test flow indices, views).
    """
    train, test = deployment_split(flows, seed)
    if views is None:
        views = runtime_views(flows)
    if views is None:
        # Without a trace, each finished flow is its own single view.
        views = flows[list(flowschema.FEATURES) + ["label"]].reset_index(names="flow")
        view_kind = "finished flows (no conntrack trace)"
    else:
        view_kind = "conntrack poll views"
    train_views = views[views["flow"].isin(train)]
    test_views = views[views["flow"].isin(test)]
    labels = flows["label"]
    chosen, candidates = select_deployment(train_views, labels.loc[train], seed)
    forest = RandomForestClassifier(n_estimators=chosen["n_estimators"],
                                    max_depth=chosen["max_depth"], criterion="gini",
                                    random_state=seed, n_jobs=2)
    _fit_views(forest, train_views)

    hits = forest.predict(flowschema.feature_matrix(test_views)) == 1
    flagged = test_views.loc[hits, "flow"].unique()
    predicted = pd.Series(np.isin(test, flagged).astype(int), index=test)
    per_family = {}
    for family in sorted(flows["family"].unique()):
        rows = test[flows["family"].to_numpy()[test] == family]
        per_family[family] = class_metrics(labels.loc[rows], predicted.loc[rows])
    X = flowschema.feature_matrix(flows)
    results = {"chosen": chosen, "candidates": candidates,
               "views": view_kind, "train_views": int(len(train_views)),
               "gate": {"min_packets": MIN_PACKETS, "min_duration": MIN_DURATION},
               "test": class_metrics(labels.loc[test], predicted.loc[test]),
               "test_by_family": per_family,
               "test_finished_flows": class_metrics(labels.loc[test], forest.predict(X[test])),
               "margin": DEPLOY_F1_MARGIN,
               "reference": {"n_estimators": DEPLOY_REFERENCE[0],
                             "max_depth": DEPLOY_REFERENCE[1]},
               "train_rows": int(len(train)), "test_rows": int(len(test)),
               "nodes": forest_nodes(forest)}
    return forest, results, test, views


def train(flow_paths, out_dir, seed=1):
    """Run the whole training job; write report.md, report.json and models."""
    began = time.time()
    flows, data_id = load_flows(flow_paths)  # before any file is written
    out_dir = Path(out_dir)
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    log.info("training on %d labeled flows from %s (%s)", len(flows),
             ", ".join(str(p) for p in flow_paths), data_id)

    import joblib
    report = {"dataset": {"id": data_id, "sources": [str(p) for p in flow_paths],
                          "flows": int(len(flows)), "seed": seed,
                          "counts": _counts(flows)},
              "families": {}}
    for family in flowschema.FAMILIES:
        if family not in set(flows["family"]):
            log.warning("no flows of family %s; skipping it", family)
            continue
        results, fitted = evaluate_family(flows, family, seed)
        report["families"][family] = results
        for name, model in fitted.items():
            joblib.dump(model, out_dir / "models" / ("%s_%s.joblib" % (family, name)))

    forest, deploy_results, test_rows, _ = train_deployment(flows, seed)
    report["deployment"] = deploy_results
    from codegen.bundle import save_bundle
    bundle_path = save_bundle(out_dir / "deploy.joblib", forest,
                              training_data={"id": data_id, "rows": deploy_results["train_rows"],
                                             "source": ", ".join(str(p) for p in flow_paths)})
    flowschema.write_flows(flows.iloc[test_rows], out_dir / "deploy_test.csv")
    report["seconds"] = round(time.time() - began, 1)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(render_markdown(report))
    log.info("wrote %s and %s; deployment model %s", out_dir / "report.md",
             out_dir / "report.json", bundle_path)
    return report


def _counts(flows):
    table = flows.groupby(["family", "label"]).size()
    return {"%s/%d" % key: int(value) for key, value in table.items()}


def render_markdown(report):
    """Render the training report as Markdown tables."""
    lines = ["# aiflowd training report", "",
             "Dataset `%s`: %d labeled flows from %s; seed %d." % (
                 report["dataset"]["id"][:19], report["dataset"]["flows"],
                 ", ".join(report["dataset"]["sources"]), report["dataset"]["seed"]),
             "",
             "## Per-family models (paper configuration)", "",
             "Test split: 20 %, stratified. CV: 5-fold stratified on the 80 % training "
             "split, F1 of the AI class.", "",
             "| family | model | class | precision | recall | F1 | support | accuracy "
             "| CV mean F1 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for family, results in report["families"].items():
        for name, metrics in results["models"].items():
            for label in ("0", "1"):
                c = metrics["classes"][label]
                lines.append("| %s | %s | %s | %s | %s | %.3f | %d | %.3f | %.3f ± %.3f |" % (
                    family, name.upper(), label, format_metric(c["precision"]),
                    format_metric(c["recall"]), c["f1"], c["support"], metrics["accuracy"],
                    metrics["cv_f1_mean"], metrics["cv_f1_std"]))
    deploy = report["deployment"]
    chosen = deploy["chosen"]
    test = deploy["test"]["classes"]["1"]
    lines += ["", "## Deployment model", "",
              "RandomForest on raw features over all families: %d trees, max_depth %d, "
              "%d nodes; CV F1 %.3f (reference %d trees, depth %d: %.3f; margin %.2f)." % (
                  chosen["n_estimators"], chosen["max_depth"], deploy["nodes"],
                  chosen["cv_f1_mean"], deploy["reference"]["n_estimators"],
                  deploy["reference"]["max_depth"], deploy["candidates"][0]["cv_f1_mean"],
                  deploy["margin"]),
              "Test split (%d flows): accuracy %.3f, AI precision %s, recall %s, F1 %.3f." % (
                  deploy["test_rows"], deploy["test"]["accuracy"],
                  format_metric(test["precision"]), format_metric(test["recall"]), test["f1"]),
              "", "| trees | max_depth | nodes | CV F1 (AI) |", "|---:|---:|---:|---:|"]
    for row in deploy["candidates"]:
        lines.append("| %d | %d | %d | %.4f ± %.4f |" % (
            row["n_estimators"], row["max_depth"], row["nodes"], row["cv_f1_mean"],
            row["cv_f1_std"]))
    lines.append("")
    return "\n".join(lines)
