"""Evaluations for the report, beyond the per-family table.

Every function takes labeled flows (canonical records) and returns plain
dicts or DataFrames, so the report can render them and tests can check
them. Splits and folds follow trainer.train, with the same seed.
"""

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, cross_val_score

from trainer import ctflows, ndpi, pcapviews
from trainer import flows as flowschema
from trainer.labels import TIME_SLACK, TUPLE
from trainer.train import (CV_FOLDS, MIN_DURATION, MIN_PACKETS, _fit_views, class_metrics,
                           find_trace, paper_models, split)

log = logging.getLogger(__name__)

EARLY_SECONDS = (1, 2, 5, 10, 30, 60)
FPR_TARGETS = (0.01, 0.005, 0.001)


def tls_holdout(flows, seed):
    """Train on one WebSocket family and test on the other (WS to WSS and back).

    Returns {"ws->wss": {model: metrics}, "wss->ws": {...}}.
    """
    results = {}
    for source, target in (("ws", "wss"), ("wss", "ws")):
        train = flows[flows["family"] == source]
        test = flows[flows["family"] == target]
        if train.empty or test.empty:
            continue
        results["%s->%s" % (source, target)] = {}
        for name, model in paper_models(seed).items():
            model.fit(flowschema.feature_matrix(train), train["label"].to_numpy())
            predicted = model.predict(flowschema.feature_matrix(test))
            results["%s->%s" % (source, target)][name] = class_metrics(test["label"], predicted)
    return results


def ablation(flows, seed, families=flowschema.FAMILIES):
    """Cross-validate the paper-configuration models with each feature dropped in turn.

    Returns a DataFrame: family, model, dropped ("none" for all five),
    cv_f1_mean, cv_f1_std and delta (change against all features).
    """
    rows = []
    for family in families:
        subset = flows[flows["family"] == family].reset_index(drop=True)
        if subset["label"].nunique() < 2:
            continue
        train, _ = split(subset, seed)
        y = subset["label"].to_numpy()[train]
        folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
        for name, model in paper_models(seed).items():
            baseline = None
            for dropped in ("none",) + flowschema.FEATURES:
                kept = [f for f in flowschema.FEATURES if f != dropped]
                X = subset.loc[train, kept].to_numpy(dtype="float64")
                cv = cross_val_score(clone(model), X, y, cv=folds, scoring="f1")
                if baseline is None:
                    baseline = cv.mean()
                rows.append({"family": family, "model": name, "dropped": dropped,
                             "cv_f1_mean": float(cv.mean()), "cv_f1_std": float(cv.std()),
                             "delta": float(cv.mean() - baseline)})
    return pd.DataFrame(rows)


def flag_by_age(views, probabilities, threshold, flows_index, max_age=None):
    """Return a 0/1 Series over ``flows_index``: flagged at some view up to ``max_age``.

    A flow counts as flagged when any of its views aged ``max_age`` seconds
    or less has a probability above ``threshold``, which is what the
    runtime's flag-once rule does on a live flow.
    """
    hit = probabilities > threshold
    if max_age is not None:
        hit &= views["age"].to_numpy() <= max_age
    flagged = views.loc[hit, "flow"].unique()
    return pd.Series(np.isin(flows_index, flagged).astype(int), index=flows_index)


def flow_scores(views, probabilities, flows_index):
    """Return each flow's highest view probability (0 for flows without a view)."""
    best = pd.Series(probabilities, index=views.index).groupby(views["flow"]).max()
    return best.reindex(flows_index, fill_value=0.0)


def early_detection(flows, views, forest, test, ages=EARLY_SECONDS, threshold=0.5,
                    full_flow_models=None):
    """Flow-level F1 when the router has seen only the first T seconds of each flow.

    ``views`` are runtime views (conntrack polls) and ``forest`` the
    deployment model; only ``test`` flows are scored. With
    ``full_flow_models`` ({family: model fitted on finished flows}), the same
    is reported for those models on the same views, for comparison.
    Returns a DataFrame: model, family ("all" too), T, coverage (share of
    flows with a scored view by T), precision, recall, f1.
    """
    test_views = views[views["flow"].isin(test)]
    X = flowschema.feature_matrix(test_views)
    scorers = {"deployment": forest.predict_proba(X)[:, 1]}
    for family, model in (full_flow_models or {}).items():
        scorers.setdefault("paper RF on finished flows", np.zeros(len(test_views)))
        in_family = flows.loc[test_views["flow"], "family"].to_numpy() == family
        if in_family.any():
            scorers["paper RF on finished flows"][in_family] = \
                model.predict_proba(X[in_family])[:, 1]
    labels = flows.loc[test, "label"]
    families = flows.loc[test, "family"]
    rows = []
    for name, probabilities in scorers.items():
        for age in ages:
            flagged = flag_by_age(test_views, probabilities, threshold, test, age)
            seen = set(test_views.loc[test_views["age"] <= age, "flow"])
            for family in ("all",) + tuple(sorted(families.unique())):
                members = test if family == "all" else test[families.to_numpy() == family]
                metrics = class_metrics(labels.loc[members], flagged.loc[members])["classes"]["1"]
                rows.append({"model": name, "family": family, "T": age,
                             "coverage": len(seen & set(members)) / max(1, len(members)),
                             "precision": metrics["precision"], "recall": metrics["recall"],
                             "f1": metrics["f1"]})
    return pd.DataFrame(rows)


def parity(flows):
    """Compare ndpiReader features with conntrack-trace features of the same flows.

    Flows are matched by 5-tuple and time. Returns (summary dict, per-flow
    DataFrame with both measurements).
    """
    parts = []
    for flows_file, group in flows.groupby("flows_file", sort=False):
        trace = find_trace(flows_file)
        if trace is None:
            continue
        conntrack = ctflows.flows_from_trace(trace)
        both = group.merge(conntrack, on=TUPLE, suffixes=("_ndpi", "_ct"))
        both = both[(both["first_seen_ct"] <= both["last_seen_ndpi"] + TIME_SLACK)
                    & (both["last_seen_ct"] >= both["first_seen_ndpi"] - TIME_SLACK)]
        parts.append(both)
    if not parts:
        return None, None
    both = pd.concat(parts, ignore_index=True)
    corrected = flows["source"].str.contains("directions from packets", regex=False)
    summary = {"flows": int(len(flows)), "matched": int(len(both)),
               "direction_corrected": int(corrected.sum())}
    for name in ("c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes"):
        summary[name + "_exact"] = float((both[name + "_ndpi"] == both[name + "_ct"]).mean())
    difference = both["duration_ct"] - both["duration_ndpi"]
    summary["duration_difference"] = {
        "mean": float(difference.mean()), "median": float(difference.median()),
        "p05": float(difference.quantile(0.05)), "p95": float(difference.quantile(0.95)),
        "min": float(difference.min()), "max": float(difference.max()),
        "within_1s": float((difference.abs() <= 1.0).mean()),
        "within_2s": float((difference.abs() <= 2.0).mean())}
    return summary, both


def corpus_flows(corpus_dir, files=None):
    """Read real-world captures with ndpiReader and as router views.

    Returns (flows, views): ``flows`` contains the TCP and UDP flows from
    ndpiReader (layer-3 bytes) with a ``file`` column; ``views`` the
    per-second router views of the same captures (pcapviews), with ``flow``
    the row of the pcapviews flow table and ``file``.
    """
    corpus_dir = Path(corpus_dir)
    paths = sorted(p for p in corpus_dir.iterdir() if p.suffix in (".pcap", ".pcapng"))
    if files is not None:
        paths = [p for p in paths if p.name in files]
    flow_parts, view_parts = [], []
    offset = 0
    with tempfile.TemporaryDirectory(prefix="aiflowd-corpus-") as workdir:
        for path in paths:
            table = ndpi.flows_from_pcap(path, workdir, capture_id=path.name)
            table = table[table["proto"].isin((6, 17))].copy()
            table["file"] = path.name
            flow_parts.append(table)
            pflows, pviews = pcapviews.pcap_flows_and_views(path)
            # Each view carries its flow's tuple, so a flagged view names the flow.
            pviews = pviews.join(pflows[list(TUPLE)], on="flow")
            pviews = pviews.assign(flow=pviews["flow"] + offset, file=path.name)
            offset += len(pflows)
            view_parts.append(pviews)
    log.info("read %d real-world flows from %d captures in %s",
             sum(len(p) for p in flow_parts), len(paths), corpus_dir)
    return pd.concat(flow_parts, ignore_index=True), pd.concat(view_parts, ignore_index=True)


def gated(views):
    """Return the views the runtime would score (its packet and age gate)."""
    return views[(views["c_to_s_pkts"] + views["s_to_c_pkts"] >= MIN_PACKETS)
                 & (views["age"] >= MIN_DURATION)]


def corpus_false_positives(corpus, forest, threshold=0.5):
    """Score real-world (all non-AI) flows; return (summary, flagged flows).

    Two measures: ndpiReader's finished flows scored once each, as the
    per-family evaluation does, and the router's view, where a flow is
    flagged if any of its per-second views that pass the runtime's gate
    scores above the threshold. The flagged flows returned are the router's,
    each with the view that flagged it; ``summary["by_file"]`` counts both
    measures for each capture.
    """
    flows, views = corpus
    finished = forest.predict_proba(flowschema.feature_matrix(flows))[:, 1] > threshold
    scored_views = gated(views)
    probabilities = forest.predict_proba(flowschema.feature_matrix(scored_views))[:, 1]
    # The view at which the router would flag each flow: its first above the threshold.
    flagging = (scored_views.assign(score=probabilities)[probabilities > threshold]
                .sort_values(["flow", "age"]).drop_duplicates("flow"))
    router_flagged = flagging["flow"].unique()
    n_router = int(views["flow"].nunique())
    summary = {
        "files": int(flows["file"].nunique()),
        "flows": int(len(flows)),
        "finished_flagged": int(finished.sum()),
        "finished_fpr": float(finished.mean()) if len(flows) else None,
        "router_flows": n_router,
        "router_scored_flows": int(scored_views["flow"].nunique()),
        "router_flagged": int(len(router_flagged)),
        "router_fpr": float(len(router_flagged) / n_router) if n_router else None,
    }
    per_file = pd.DataFrame({
        "flows": views.groupby("file")["flow"].nunique(),
        "router_flagged": flagging.groupby("file")["flow"].nunique(),
        "finished_flagged": flows[finished].groupby("file").size(),
    }).fillna(0).astype(int)
    summary["by_file"] = per_file.reset_index(names="file").to_dict("records")
    flagged = flagging[["file"] + list(TUPLE) + ["age"] + list(flowschema.FEATURES)
                       + ["score"]].reset_index(drop=True)
    return summary, flagged


def out_of_fold_flow_scores(flows, views, train, forest_params, seed):
    """Return each training flow's highest view probability from a model that never saw it."""
    labels = flows.loc[train, "label"]
    scores = pd.Series(0.0, index=train)
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    for fit, check in folds.split(train, labels.to_numpy()):
        fit_flows, check_flows = train[fit], train[check]
        forest = clone(forest_params)
        _fit_views(forest, views[views["flow"].isin(fit_flows)])
        check_views = views[views["flow"].isin(check_flows)]
        if check_views.empty:
            continue
        probabilities = forest.predict_proba(flowschema.feature_matrix(check_views))[:, 1]
        scores.loc[check_flows] = flow_scores(check_views, probabilities, check_flows).to_numpy()
    return scores


def calibrate(flows, views, forest, train, test, seed, targets=FPR_TARGETS, corpus=None):
    """Choose thresholds for target false positive rates and report what they cost.

    Thresholds come from out-of-fold scores of the training flows (a flow's
    score is its highest view probability, since the runtime flags on the
    first view above the threshold). Each is then applied to the test flows,
    and to the real-world corpus when given. Returns a list of dicts, the
    first for the default threshold (``target_fpr`` None).
    """
    oof = out_of_fold_flow_scores(flows, views, train, forest, seed)
    negatives = np.sort(oof[flows.loc[train, "label"] == 0].to_numpy())
    test_views = views[views["flow"].isin(test)]
    test_scores = flow_scores(test_views,
                              forest.predict_proba(flowschema.feature_matrix(test_views))[:, 1],
                              test)
    corpus_scores = None
    if corpus is not None:
        corpus_views = gated(corpus[1])
        corpus_scores = flow_scores(
            corpus_views, forest.predict_proba(flowschema.feature_matrix(corpus_views))[:, 1],
            np.arange(corpus[1]["flow"].max() + 1) if len(corpus[1]) else np.arange(0))
    labels = flows.loc[test, "label"]
    rows = []
    for target in (None,) + tuple(targets):
        if target is None:
            threshold = 0.5
        else:
            # The smallest threshold with at most target * n negatives above it.
            allowed = int(np.floor(target * len(negatives)))
            threshold = float(negatives[-allowed - 1]) if allowed < len(negatives) else 0.0
        predicted = (test_scores > threshold).astype(int)
        metrics = class_metrics(labels, predicted)["classes"]
        negatives_test = labels == 0
        row = {"target_fpr": target, "threshold": threshold,
               "train_oof_fpr": float((negatives > threshold).mean()),
               "test_fpr": float(predicted[negatives_test].mean()),
               "test_recall": metrics["1"]["recall"], "test_precision": metrics["1"]["precision"],
               "test_f1": metrics["1"]["f1"]}
        if corpus_scores is not None:
            row["corpus_fpr"] = float((corpus_scores > threshold).mean())
        rows.append(row)
    return rows
