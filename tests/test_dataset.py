"""A short dataset capture in the testbed: every scenario's flows get their labels.

It runs every scenario of the default mix (over WS and WSS where it has
both) for a few seconds of session starts at a compressed time scale,
captures on the router, and joins the generator's labels to ndpiReader's
flows and to the conntrack trace. Needs root; about two minutes.
"""

import json

import pytest

from tools.capture import CaptureConfig, make_capture
from tools.traffic.scenarios import DEFAULT_MIX
from trainer import ctflows
from trainer import labels as labeling
from trainer.flows import read_flows

pytestmark = [pytest.mark.root, pytest.mark.slow]

EVERY_SCENARIO = ",".join("%s/%s" % entry for entry in sorted(set(DEFAULT_MIX)))


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    config = CaptureConfig(duration=8, concurrency=60, seed=3, time_scale=8.0,
                           mix=EVERY_SCENARIO, workers=2, server_processes=2)
    summary = make_capture(out, config)
    return out, summary


def test_every_scenario_is_labeled(capture):
    out, summary = capture
    flows = read_flows(out / "flows.csv")
    labels = labeling.read_labels(out / "labels.csv")
    expected = {entry for entry in set(DEFAULT_MIX)}
    seen = set(zip(flows["scenario"], flows["family"]))
    assert seen == expected
    assert summary["unlabeled_flows"] == 0
    assert summary["merged_flows"] == 0
    # Every connection the generator opened is one labeled flow.
    assert summary["labeled"] == len(labels) == len(flows)
    for (scenario, family), group in labels.groupby(["scenario", "family"]):
        matched = flows[(flows["scenario"] == scenario) & (flows["family"] == family)]
        assert len(matched) == len(group), (scenario, family)
        assert set(matched["label"]) == set(group["label"])


def test_trace_flows_join_too(capture):
    out, _ = capture
    trace_flows = ctflows.flows_from_trace(out / "conntrack.trace.gz")
    joined, report = labeling.join_labels(trace_flows, labeling.read_labels(out / "labels.csv"))
    assert report.unlabeled == []
    assert report.unmatched_labels == []
    assert report.labeled == len(joined)


def test_capture_metadata(capture):
    out, summary = capture
    meta = json.loads((out / "capture.json").read_text())
    assert meta["config"]["workers"] == 2
    assert meta["tcpdump_dropped"] == 0
    assert meta["generator_commit"]
    assert (out / "capture.pcap.gz").stat().st_size == meta["pcap_bytes"]
