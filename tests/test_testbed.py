"""Live tests in the testbed: real namespaces, NAT, conntrack, tcpdump, ndpiReader.

They need root and run real traffic for about two minutes; CI runs them as
root. Without root they are skipped with one line saying so.
"""

import os
import shutil
import subprocess
import sys

import pytest

from tools import testbed as tb
from trainer import ctflows, ndpi
from trainer import labels as labeling

pytestmark = pytest.mark.root


def test_teardown_on_error():
    bed = tb.Testbed()
    with pytest.raises(RuntimeError, match="boom"):
        with bed:
            assert set(bed.namespaces) <= set(_namespaces())
            sleeper = bed.spawn(bed.server, ["sleep", "600"])
            raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert not set(bed.namespaces) & set(_namespaces())


def test_no_route_out_of_the_testbed():
    with tb.Testbed() as bed:
        for ns in bed.namespaces:
            routes = bed.run(ns, ["ip", "-4", "route", "show"], capture_output=True,
                             text=True, check=True).stdout
            assert "default" not in routes
            for line in routes.splitlines():
                assert line.split()[0].startswith(("198.18.", "198.19.")), line
        sysctl = bed.run(bed.router, ["sysctl", "-n", "net.netfilter.nf_conntrack_acct",
                                      "net.netfilter.nf_conntrack_timestamp"],
                         capture_output=True, text=True, check=True).stdout.split()
        assert sysctl == ["1", "1"]


def _namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv not found (util-linux)")
def test_without_root_one_clear_line(tmp_path):
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "tools.cli", "testbed-demo"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "the testbed demo needs root" in lines[0]


@pytest.mark.slow
def test_live_end_to_end(tmp_path):
    from tools.demo import testbed_demo

    before = set(_namespaces())
    result = testbed_demo(duration=25, concurrency=12, seed=11, keep_dir=tmp_path)
    assert [n for n in _namespaces() if n.startswith(tb.NAMESPACE_PREFIX) and n not in before] == []

    scores = result["scores"]
    assert len(result["truth"]) >= 20
    assert result["stats"]["flows_seen"] >= 20
    assert scores["ai_flows"] >= 10
    assert scores["precision"] >= 0.8, scores
    assert scores["recall"] >= 0.8, scores

    # The same run, measured twice: ndpiReader on the router's capture and
    # the router's conntrack table must agree on packets and layer-3 bytes
    # exactly. Durations differ by the 1 s poll interval plus the rounding
    # of delta-time to whole seconds.
    measured = ndpi.flows_from_pcap(tmp_path / "capture.pcap", tmp_path)
    labeled, report = labeling.join_labels(measured, labeling.read_labels(tmp_path / "labels.csv"))
    assert report.unlabeled == []
    labeled = labeled[labeled["label"] >= 0]  # without flows merged by a reused port
    conntrack = ctflows.flows_from_trace(tmp_path / "conntrack.trace")
    both = labeled.merge(conntrack, on=labeling.TUPLE, suffixes=("_ndpi", "_ct"))
    assert len(both) >= 0.95 * len(labeled)
    for name in ("c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes"):
        assert (both[name + "_ndpi"] == both[name + "_ct"]).all(), name
    assert ((both["duration_ndpi"] - both["duration_ct"]).abs() <= 2.0).all()
