"""The evaluation report: the evaluation of the paper the method comes from
(WJARR 27(01) 1302-1308, 2025), plus what that evaluation lacks.

``build_report`` fits and evaluates everything on one dataset and writes
REPORT.md, report.json and the figures into one folder. Sections:

- Table 1 per family (WS, WSS, MCP) with LogisticRegression and
  RandomForest in the paper configuration, 5-fold CV mean F1, confusion
  matrices and pair plots;
- TLS-only holdout (train on WS, test on WSS, and back) and feature
  ablation;
- the deployment model, early detection after T seconds of each flow,
  train/serve parity between ndpiReader and conntrack, false positives on
  real-world captures, and threshold calibration for target false positive
  rates.
"""

import json
import logging
import time
from pathlib import Path

import numpy as np

from trainer import evaluate, figures, ndpi
from trainer import flows as flowschema
from trainer.train import DEPLOY_REFERENCE, evaluate_family, load_flows, train_deployment
from trainer.train import format_metric as _f

log = logging.getLogger(__name__)

# F1 values the paper reports (WJARR 27(01) 1302-1308, 2025), by family,
# model and class, for side-by-side reading; the summary we work from states
# only these.
# Below this many test flows of a class, the report warns that test scores
# are coarse (one flow is more than 3 % of the class).
SMALL_SUPPORT = 30

PAPER_F1 = {
    ("ws", "rf", "1"): "0.97 (CV)",
    ("wss", "rf", "1"): "0.97",
    ("mcp", "rf", "1"): "0.99",
    ("ws", "lr", "0"): "0.62",
}


def build_report(data_paths, out_dir, seed=1, corpus_dir=None, corpus_files=None,
                 ablation=True):
    """Evaluate the dataset(s) in ``data_paths`` and write the report to ``out_dir``.

    ``data_paths`` are flows.csv files, each with its conntrack trace beside
    it. ``corpus_dir`` contains real-world pcaps for the false positive
    section; None leaves that section out. Returns the report dict.
    """
    began = time.time()
    # Check every input before the first minute of work and the first file written.
    flows, data_id = load_flows(data_paths)
    if corpus_dir is not None:
        _check_corpus(corpus_dir)
    out_dir = Path(out_dir)
    figure_dir = out_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    report = {"dataset": {"id": data_id, "sources": [str(p) for p in data_paths],
                          "flows": int(len(flows)), "seed": seed,
                          "counts": _counts(flows), "cards": _cards(data_paths)},
              "families": {}, "figures": {}}

    log.info("report 1/7: per-family models")
    full_flow_rf = {}
    for family in flowschema.FAMILIES:
        if flows[flows["family"] == family]["label"].nunique() < 2:
            log.warning("family %s lacks one of the labels; skipping it", family)
            continue
        results, fitted = evaluate_family(flows, family, seed)
        report["families"][family] = results
        full_flow_rf[family] = fitted["rf"]
        report["figures"]["pairplot_" + family] = _relative(
            figures.pairplot(flows, family, figure_dir / ("pairplot-%s.png" % family), seed=seed),
            out_dir)
    report["figures"]["confusion"] = _relative(
        figures.confusion_matrices(report["families"], figure_dir / "confusion.png"), out_dir)

    log.info("report 2/7: TLS-only holdout")
    report["tls_holdout"] = evaluate.tls_holdout(flows, seed)

    if ablation:
        log.info("report 3/7: feature ablation")
        report["ablation"] = _records(evaluate.ablation(flows, seed))

    log.info("report 4/7: deployment model")
    forest, deployment, test, views = train_deployment(flows, seed)
    report["deployment"] = deployment

    log.info("report 5/7: early detection")
    early = evaluate.early_detection(flows, views, forest, test,
                                     full_flow_models=full_flow_rf)
    report["early_detection"] = _records(early)
    report["figures"]["early_detection"] = _relative(
        figures.early_detection(early[early["family"] == "all"],
                                figure_dir / "early-detection.png"), out_dir)

    log.info("report 6/7: train/serve parity")
    summary, _ = evaluate.parity(flows)
    report["parity"] = summary

    corpus = None
    if corpus_dir is not None:
        log.info("report 7/7: real-world captures in %s", corpus_dir)
        corpus = evaluate.corpus_flows(corpus_dir, corpus_files)
        summary, flagged = evaluate.corpus_false_positives(corpus, forest)
        report["corpus"] = {"dir": str(corpus_dir), **summary,
                            "flagged": _records(flagged)}
    train = np.setdiff1d(np.arange(len(flows)), test)
    report["calibration"] = evaluate.calibrate(flows, views, forest, train, test, seed,
                                               corpus=corpus)
    report["seconds"] = round(time.time() - began, 1)

    (out_dir / "report.json").write_text(
        json.dumps(report, indent=2, default=_json_value, allow_nan=False) + "\n")
    (out_dir / "REPORT.md").write_text(render(report))
    log.info("wrote %s in %.0f s", out_dir / "REPORT.md", report["seconds"])
    return report


def _check_corpus(corpus_dir):
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise FileNotFoundError("real-world capture folder %s not found; pass an existing "
                                "folder of .pcap files (--corpus DIR) or leave the corpus out "
                                "(--no-corpus)" % corpus_dir)
    ndpi.require_ndpireader()


def _records(table):
    """Return a DataFrame's rows as dicts, with undefined values (NaN) as None."""
    return table.astype(object).where(table.notna(), None).to_dict("records")


def _json_value(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError("cannot write %r to JSON" % (value,))


def _relative(path, base):
    return str(Path(path).relative_to(base))


def _counts(flows):
    table = flows.groupby(["family", "scenario", "label"]).size()
    return [{"family": f, "scenario": s, "label": int(label), "flows": int(n)}
            for (f, s, label), n in table.items()]


def _cards(data_paths):
    cards = []
    for path in data_paths:
        card = Path(path).parent / "CARD.md"
        if card.exists():
            cards.append(str(card))
    return cards


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render(report):
    """Render the report dict as Markdown."""
    lines = ["# aiflowd evaluation report", ""]
    lines += _dataset_section(report)
    lines += _table1_section(report)
    lines += _holdout_section(report)
    if "ablation" in report:
        lines += _ablation_section(report)
    lines += _deployment_section(report)
    lines += _early_section(report)
    lines += _parity_section(report)
    if "corpus" in report:
        lines += _corpus_section(report)
    lines += _calibration_section(report)
    lines += ["", "Report built in %.0f s." % report["seconds"], ""]
    return "\n".join(lines)


def _dataset_section(report):
    dataset = report["dataset"]
    lines = ["## Dataset", "",
             "Dataset `%s`: %d labeled flows from %s (seed %d for every split and model)."
             % (dataset["id"], dataset["flows"], ", ".join(dataset["sources"]), dataset["seed"])]
    if dataset["cards"]:
        lines.append("How it was made: %s." % ", ".join(dataset["cards"]))
    lines += [""]
    lines += _table(("family", "scenario", "label", "flows"),
                    [(c["family"], c["scenario"], c["label"], c["flows"])
                     for c in dataset["counts"]])
    return lines + [""]


def _table1_section(report):
    lines = ["## Table 1: per-family models, paper configuration", "",
             "Min-max scaled features; LogisticRegression (liblinear, L2) and RandomForest "
             "(100 trees, max_depth 20, gini); stratified 80/20 split; 5-fold stratified "
             "cross-validation on the training part, F1 of the AI class.", ""]
    rows = []
    for family, results in report["families"].items():
        for name, metrics in results["models"].items():
            for label in ("0", "1"):
                c = metrics["classes"][label]
                rows.append((family.upper(), name.upper(), label, _f(c["precision"]),
                             _f(c["recall"]), _f(c["f1"]), c["support"], _f(metrics["accuracy"]),
                             "%s ± %s" % (_f(metrics["cv_f1_mean"]), _f(metrics["cv_f1_std"])),
                             PAPER_F1.get((family, name, label), "")))
    lines += _table(("family", "model", "class", "precision", "recall", "F1", "support",
                     "accuracy", "CV mean F1", "paper F1"), rows)
    lines += ["", "`paper F1` holds the values the paper gives, on the row of the class they "
              "are for: the AI class for RF, class 0 for LR on WS; it gives no others. "
              "`n/a`: the model predicted no flow of that class."]
    small = sorted({(family, label) for family, results in report["families"].items()
                    for metrics in results["models"].values()
                    for label, c in metrics["classes"].items()
                    if c["support"] < SMALL_SUPPORT})
    if small:
        lines += ["", "**Caution:** the test split holds fewer than %d flows of %s; its "
                  "scores move by whole steps of one flow, so read the CV column instead."
                  % (SMALL_SUPPORT, ", ".join("%s label %s" % (f.upper(), label)
                                              for f, label in small))]
    lines += ["", "Figure 1: feature pair plots per family (log10(1 + x), red = AI).", ""]
    for family in report["families"]:
        lines.append("![%s pair plot](%s)" % (family, report["figures"]["pairplot_" + family]))
    lines += ["", "Figure 2: confusion matrices on the test split.", "",
              "![confusion matrices](%s)" % report["figures"]["confusion"], ""]
    return lines


def _holdout_section(report):
    lines = ["## TLS-only holdout", "",
             "Train on every flow of one WebSocket family, test on every flow of the other: "
             "does a model learned on plain WebSocket carry over to TLS, and back?", ""]
    rows = []
    for direction, models in report["tls_holdout"].items():
        for name, metrics in models.items():
            c0, c1 = metrics["classes"]["0"], metrics["classes"]["1"]
            rows.append((direction, name.upper(), _f(metrics["accuracy"]), _f(c0["f1"]),
                         _f(c1["precision"]), _f(c1["recall"]), _f(c1["f1"])))
    lines += _table(("train->test", "model", "accuracy", "F1 class 0", "precision AI",
                     "recall AI", "F1 AI"), rows)
    return lines + [""]


def _ablation_section(report):
    lines = ["## Feature ablation", "",
             "CV mean F1 (AI) with one feature dropped, and the change against all five.", ""]
    rows = [(r["family"].upper(), r["model"].upper(), r["dropped"], _f(r["cv_f1_mean"]),
             "%+.3f" % r["delta"]) for r in report["ablation"]]
    lines += _table(("family", "model", "dropped", "CV F1", "change"), rows)
    return lines + [""]


def _deployment_section(report):
    deploy = report["deployment"]
    chosen = deploy["chosen"]
    test = deploy["test"]["classes"]["1"]
    lines = ["## Deployment model", "",
             "One RandomForest over all families, on raw counters, trained on %s "
             "(%d views of %d training flows), gate: %d packets. Size chosen by flow-level "
             "CV F1 within %.2f of the %d-tree, depth-%d reference: **%d trees, max_depth %d, "
             "%d nodes**, CV F1 %.3f (reference %.3f)."
             % (deploy["views"], deploy["train_views"], deploy["train_rows"],
                deploy["gate"]["min_packets"], deploy["margin"], DEPLOY_REFERENCE[0],
                DEPLOY_REFERENCE[1], chosen["n_estimators"], chosen["max_depth"],
                deploy["nodes"], chosen["cv_f1_mean"], deploy["candidates"][0]["cv_f1_mean"]),
             "",
             "Test flows (%d), flagged when any view is AI as on the router: accuracy %s, "
             "precision %s, recall %s, F1 %s." % (
                 deploy["test_rows"], _f(deploy["test"]["accuracy"]), _f(test["precision"]),
                 _f(test["recall"]), _f(test["f1"])), ""]
    rows = []
    for family, metrics in deploy["test_by_family"].items():
        c = metrics["classes"]["1"]
        rows.append((family.upper(), _f(c["precision"]), _f(c["recall"]), _f(c["f1"]),
                     metrics["classes"]["0"]["support"] + c["support"]))
    lines += _table(("family", "precision AI", "recall AI", "F1 AI", "test flows"), rows)
    return lines + [""]


def _early_section(report):
    lines = ["## Early detection", "",
             "Flow-level scores when the router has seen only the first T seconds of each "
             "test flow: a flow counts as flagged if any conntrack poll view aged T or less "
             "(and past the runtime's packet gate) is scored AI. Views come from the "
             "capture's conntrack trace replayed through the runtime's own flow table. "
             "`paper RF on finished flows` is the per-family paper forest, trained on "
             "finished ndpiReader flows, scored on the same views.", ""]
    rows = [(r["model"], r["family"].upper(), r["T"], _f(r["coverage"], 2), _f(r["precision"]),
             _f(r["recall"]), _f(r["f1"])) for r in report["early_detection"]]
    lines += _table(("model", "family", "T (s)", "share of flows with a view", "precision",
                     "recall", "F1"), rows)
    lines += ["", "![early detection](%s)" % report["figures"]["early_detection"], ""]
    return lines


def _parity_section(report):
    parity = report["parity"]
    if parity is None:
        return ["## Train/serve parity", "", "No conntrack trace next to the flows.", ""]
    difference = parity["duration_difference"]
    return ["## Train/serve parity", "",
            "The same flows measured twice: ndpiReader on the router's capture (bytes "
            "reduced by the link header) and the router's conntrack table (trace). "
            "%d of %d flows matched by 5-tuple and time." % (parity["matched"], parity["flows"])
            + _corrected_note(parity), ""] + _table(("feature", "exact match"), [
                (name, "%.4f" % parity[name + "_exact"])
                for name in ("c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes")]) + [
            "",
            "Duration, conntrack minus ndpiReader: mean %+.3f s, median %+.3f s, 5th to 95th "
            "percentile %+.3f to %+.3f s, range %+.3f to %+.3f s; %.1f %% within 1 s and "
            "%.1f %% within 2 s. Conntrack's duration runs from the entry's creation "
            "(delta-time, whole seconds) to the 1 s poll that saw the last change."
            % (difference["mean"], difference["median"], difference["p05"], difference["p95"],
               difference["min"], difference["max"], 100 * difference["within_1s"],
               100 * difference["within_2s"]), ""]


def _corrected_note(parity):
    count = parity.get("direction_corrected", 0)
    if not count:
        return ""
    return (" Before this comparison, %d flows took their counters from aiflowd's own count "
            "of the packets, because ndpiReader 4.2 had put every packet of those flows in the "
            "client-to-server direction (it counts them right when each flow is read alone); "
            "as ndpiReader wrote them, those flows would not match." % count)


def _corpus_section(report):
    corpus = report["corpus"]
    lines = ["## Real-world false positives", "",
             "Every TCP and UDP flow of the %d captures in `%s` (real traffic of many "
             "applications, none of it AI) scored by the deployment model; other protocols "
             "have no ports and are left out. The router's view follows each 5-tuple "
             "through the whole capture without conntrack's idle timeouts, so a flow idle "
             "for minutes keeps its age." % (corpus["files"], corpus["dir"]), "",
             "- as the router sees them (per-second views past the %s-packet gate, flagged "
             "at the first AI view): %d of %d flows flagged (%d were ever scored), false "
             "positive rate %s." % (
                 report["deployment"]["gate"]["min_packets"], corpus["router_flagged"],
                 corpus["router_flows"], corpus["router_scored_flows"],
                 _f(corpus["router_fpr"], 4)),
             "- ndpiReader's finished flows, scored once each with no packet gate, as the "
             "per-family evaluation does: %d of %d flagged, false positive rate %s."
             % (corpus["finished_flagged"], corpus["flows"], _f(corpus["finished_fpr"], 4)),
             ""]
    if corpus.get("by_file"):
        lines += _table(("file", "flows", "flagged by the router", "flagged finished flows"),
                        [(f["file"], f["flows"], f["router_flagged"], f["finished_flagged"])
                         for f in corpus["by_file"]])
        lines += [""]
    if corpus["flagged"]:
        lines += ["Flows the router would flag, each with the view that flagged it. A flow's "
                  "source is the sender of its first packet in the capture, which is the "
                  "server when a capture starts mid-connection.", ""]
        lines += _table(("file", "flow", "age (s)", "packets c/s", "bytes c/s", "score"),
                        [(f["file"], "%s > %s" % (_endpoint(f["src_ip"], f["src_port"]),
                                                  _endpoint(f["dst_ip"], f["dst_port"])),
                          "%.0f" % f["age"], "%d/%d" % (f["c_to_s_pkts"], f["s_to_c_pkts"]),
                          "%d/%d" % (f["c_to_s_bytes"], f["s_to_c_bytes"]), "%.2f" % f["score"])
                         for f in corpus["flagged"]])
    return lines + [""]


def _endpoint(address, port):
    return ("[%s]:%s" if ":" in str(address) else "%s:%s") % (address, port)


def _calibration_section(report):
    rows = []
    for r in report["calibration"]:
        target = r["target_fpr"]
        rows.append(("none (default)" if target is None else "%.1f %%" % (100 * target),
                     "%.4f" % r["threshold"], "%.4f" % r["train_oof_fpr"], "%.4f" % r["test_fpr"],
                     _f(r["test_precision"]), _f(r["test_recall"]),
                     "%.4f" % r["corpus_fpr"] if "corpus_fpr" in r else "n/a"))
    return ["## Threshold calibration", "",
            "Thresholds for a target false positive rate, chosen on out-of-fold scores of the "
            "training flows (a flow's score is its highest view probability), then applied to "
            "the test flows and the real-world captures. The runtime takes the threshold "
            "with `--threshold`.", ""] + _table(
        ("target FPR", "threshold", "train FPR (out of fold)", "test FPR", "test precision",
         "test recall", "real-world FPR"), rows) + _no_flag_note(report["calibration"]) + [""]


def _no_flag_note(calibration):
    empty = ["%.4f" % r["threshold"] for r in calibration if r["test_precision"] is None]
    if not empty:
        return []
    return ["", "At threshold %s no test flow is flagged (precision `n/a`): on the training "
            "flows only a threshold that flags (almost) nothing meets that target, so it is no "
            "usable setting; a larger dataset may place it." % ", ".join(empty)]
