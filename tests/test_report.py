"""The evaluation report, built from the embedded capture."""

import json
from pathlib import Path

import pytest

from tools.demo import DEFAULT_CORPUS
from trainer import evaluate
from trainer.flows import FlowFileError
from trainer.ndpi import NdpiError
from trainer.report import _endpoint, build_report
from trainer.train import class_metrics, train
from conftest import CAPTURE

needs_corpus = pytest.mark.skipif(not DEFAULT_CORPUS.is_dir(),
                                  reason="nDPI's real-world captures not found at %s"
                                  % DEFAULT_CORPUS)

# TCP and UDP flows per capture, as ndpiReader 4.2 -v 2 reports them.
CORPUS_FLOWS = {"KakaoTalk_chat.pcap": 37, "android.pcap": 59}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    corpus = DEFAULT_CORPUS if DEFAULT_CORPUS.is_dir() else None
    result = build_report([CAPTURE / "flows.csv"], out, corpus_dir=corpus,
                          corpus_files=set(CORPUS_FLOWS))
    return out, result


def test_report_files(report):
    out, result = report
    text = (out / "REPORT.md").read_text()
    for heading in ("## Dataset", "## Table 1", "## TLS-only holdout", "## Feature ablation",
                    "## Deployment model", "## Early detection", "## Train/serve parity",
                    "## Threshold calibration"):
        assert heading in text
    assert result["dataset"]["id"] in text
    saved = json.loads((out / "report.json").read_text())
    assert saved["dataset"]["flows"] == 741
    for name in result["figures"].values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_table1(report):
    _, result = report
    assert set(result["families"]) == {"ws", "wss", "mcp"}
    for family, results in result["families"].items():
        assert set(results["models"]) == {"lr", "rf"}
        assert results["test"] + results["train"] == results["flows"]
        for metrics in results["models"].values():
            assert len(metrics["cv_f1_folds"]) == 5
            assert sum(map(sum, metrics["confusion"])) == results["test"]
    # The forest separates the MCP family; liblinear's LogisticRegression on
    # min-max scaled byte counts does not.
    assert result["families"]["mcp"]["models"]["rf"]["classes"]["1"]["f1"] > 0.9


def test_report_ablation_and_holdout(report):
    _, result = report
    assert set(result["tls_holdout"]) == {"ws->wss", "wss->ws"}
    rows = result["ablation"]
    assert len(rows) == 3 * 2 * 6
    assert {r["dropped"] for r in rows} == {"none", "duration", "c_to_s_pkts", "s_to_c_pkts",
                                            "c_to_s_bytes", "s_to_c_bytes"}
    assert all(r["delta"] == 0 for r in rows if r["dropped"] == "none")


def test_report_early_detection(report):
    _, result = report
    rows = [r for r in result["early_detection"] if r["model"] == "deployment"
            and r["family"] == "all"]
    assert [r["T"] for r in rows] == [1, 2, 5, 10, 30, 60]
    coverage = [r["coverage"] for r in rows]
    assert coverage == sorted(coverage)
    recall = [r["recall"] for r in rows]
    assert recall == sorted(recall)  # a flow flagged by T stays flagged later


def test_report_parity(report):
    _, result = report
    parity = result["parity"]
    assert parity["matched"] >= 0.99 * parity["flows"]
    for name in ("c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes"):
        assert parity[name + "_exact"] >= 0.99
    assert parity["duration_difference"]["within_2s"] == 1.0


def test_report_calibration(report):
    _, result = report
    rows = result["calibration"]
    assert rows[0]["target_fpr"] is None
    assert rows[0]["threshold"] == 0.5
    thresholds = [r["threshold"] for r in rows[1:]]
    assert thresholds == sorted(thresholds)
    for row in rows[1:]:
        assert row["train_oof_fpr"] <= row["target_fpr"]


@needs_corpus
def test_corpus_flow_counts():
    flows, views = evaluate.corpus_flows(DEFAULT_CORPUS, set(CORPUS_FLOWS))
    assert flows.groupby("file").size().to_dict() == CORPUS_FLOWS
    assert views.groupby("file")["flow"].nunique().to_dict() == CORPUS_FLOWS


@needs_corpus
def test_report_corpus_section(report):
    _, result = report
    corpus = result["corpus"]
    assert corpus["files"] == 2
    assert corpus["flows"] == sum(CORPUS_FLOWS.values())
    assert corpus["router_flagged"] == len(corpus["flagged"])
    assert 0 <= corpus["router_flagged"] <= corpus["router_scored_flows"] <= corpus["router_flows"]
    by_file = {f["file"]: f for f in corpus["by_file"]}
    assert {name: f["flows"] for name, f in by_file.items()} == CORPUS_FLOWS
    assert sum(f["router_flagged"] for f in by_file.values()) == corpus["router_flagged"]
    assert sum(f["finished_flagged"] for f in by_file.values()) == corpus["finished_flagged"]
    for flow in corpus["flagged"]:
        # The router only scores a flow past its packet gate.
        assert flow["c_to_s_pkts"] + flow["s_to_c_pkts"] >= 8
        assert flow["score"] > 0.5


def test_report_marks_small_test_splits(report):
    out, _ = report
    text = (out / "REPORT.md").read_text()
    # The embedded capture's WebSocket families have 11 and 12 test flows per label.
    assert "**Caution:** the test split holds fewer than 30 flows of" in text
    caution = text.split("**Caution:**")[1].split("\n")[0]
    assert "WS label 0" in caution
    assert "MCP label" not in caution


def test_precision_of_unpredicted_class_undefined():
    metrics = class_metrics([0, 1, 1, 0], [0, 0, 0, 0])
    assert metrics["classes"]["1"]["precision"] is None
    assert metrics["classes"]["1"]["recall"] == 0.0
    assert metrics["classes"]["1"]["f1"] == 0.0
    assert metrics["classes"]["0"]["precision"] == 0.5
    assert class_metrics([0, 0], [0, 1])["classes"]["1"]["recall"] is None


def test_endpoints_bracket_ipv6():
    assert _endpoint("2001:db8::1", 443) == "[2001:db8::1]:443"
    assert _endpoint("198.18.0.2", 8443) == "198.18.0.2:8443"


def test_report_checks_inputs_first(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(FlowFileError, match="missing.csv"):
        build_report([tmp_path / "missing.csv"], out)
    assert not out.exists()

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(NdpiError, match="apt-get install libndpi-bin"):
        build_report([CAPTURE / "flows.csv"], out, corpus_dir=corpus)
    assert not out.exists()


def test_train_checks_inputs_first(tmp_path):
    out = tmp_path / "train"
    with pytest.raises(FlowFileError, match="missing.csv"):
        train([tmp_path / "missing.csv"], out)
    assert not out.exists()
