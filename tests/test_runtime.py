"""The router runtime, replaying the committed conntrack trace.

The expected flagged flows come from an oracle written here on its own: it
follows every flow through the trace's snapshots, gates and scores it with
the committed scikit-learn forest (not the generated code), and flags a flow
the first time the forest says AI. The runtime, under the MicroPython unix
port and under CPython, must flag exactly those flows, with the same
features, and send each to a real Unix syslog socket.
"""

import json
import subprocess
import sys
import time

import joblib
import numpy as np
import pytest

from aiflowd import conntrack
from aiflowd.main import OPTIONS
from aiflowd.trace import TraceReader
from conftest import CAPTURE, COMMITTED_MODEL, GENERATED, REPO
from tools.demo import (flagged_flows, match_flags, micropython_command, precision_recall,
                        trace_truth)
from tools.syslogd import SyslogReceiver, parse_fields

TRACE = CAPTURE / "conntrack.trace.gz"
MIN_PACKETS = OPTIONS["min-packets"][1]
MIN_DURATION = OPTIONS["min-duration"][1]


def oracle_flags(trace, forest):
    """Return {(5-tuple, start): [features at the poll that flagged it]} for a trace.

    start is the flow's creation time in whole epoch seconds, as the
    runtime's syslog message gives it.
    """
    flows = {}
    candidates = []  # (flow instance, 5-tuple, features) for every gated poll
    instances = 0
    for now, lines in TraceReader(str(trace)):
        present = set()
        for line in lines:
            entry = conntrack.parse_line(line)
            key = entry.key()
            present.add(key)
            counters = [entry.orig_packets, entry.reply_packets, entry.orig_bytes,
                        entry.reply_bytes]
            start = now - (entry.delta_time or 0)
            flow = flows.get(key)
            if (flow is None or counters[0] < flow["counters"][0]
                    or counters[1] < flow["counters"][1] or start > flow["start"] + 2.0):
                instances += 1
                flow = flows[key] = {"start": start, "last": now, "counters": counters,
                                     "instance": instances}
            elif counters != flow["counters"]:
                flow["counters"] = counters
                flow["last"] = now
            else:
                continue
            x = [flow["last"] - flow["start"]] + counters
            if x[1] + x[2] >= MIN_PACKETS and x[0] >= MIN_DURATION:
                five_tuple = (entry.proto, entry.src, entry.sport, entry.dst, entry.dport)
                candidates.append((flow["instance"], (five_tuple, int(flow["start"])), x))
        for key in set(flows) - present:
            del flows[key]

    predictions = forest.predict(np.array([x for _, _, x in candidates], dtype=np.float64))
    flagged = {}
    done = set()
    for (instance, key, x), prediction in zip(candidates, predictions):
        if prediction == 1 and instance not in done:
            done.add(instance)
            flagged[key] = x
    return flagged


@pytest.fixture(scope="module")
def expected():
    forest = joblib.load(COMMITTED_MODEL)["estimator"]
    forest.set_params(n_jobs=1)
    return oracle_flags(TRACE, forest)


def runtime_command(kind):
    if kind == "micropython":
        return micropython_command()
    return [sys.executable, str(REPO / "firmware" / "bin" / "aiflowd")]


def replay(kind, tmp_path, *options):
    socket_path = tmp_path / "log.sock"
    stats_path = tmp_path / "stats.json"
    with SyslogReceiver(socket_path) as receiver:
        done = subprocess.run(
            runtime_command(kind) + ["--trace", str(TRACE), "--syslog", str(socket_path),
                                     "--model", str(GENERATED / "aiflowd_model.py"),
                                     "--stats", str(stats_path)] + list(options),
            capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        deadline = time.time() + 5
        stats = json.loads(stats_path.read_text())
        while len(receiver.messages()) < stats["syslog_sent"] and time.time() < deadline:
            time.sleep(0.05)
        records = receiver.messages("aiflowd")
    return records, stats, done.stderr


@pytest.mark.parametrize("kind", ["micropython", "cpython"])
def test_replay_flags_expected_flows(kind, tmp_path, expected):
    records, stats, _ = replay(kind, tmp_path)
    flagged = flagged_flows(records)

    assert stats["flows_seen"] == 741
    assert stats["flows_flagged"] == len(records) == len(flagged)
    assert set(flagged) == set(expected)
    assert len(flagged) == 319
    for key, fields in flagged.items():
        x = expected[key]
        assert float(fields["duration"]) == pytest.approx(x[0], abs=5e-4)
        assert [int(fields[name]) for name in ("c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes",
                                               "s_to_c_bytes")] == x[1:]


def test_replay_against_labels(tmp_path):
    records, stats, _ = replay("micropython", tmp_path)
    truth = trace_truth(CAPTURE)
    assert len(truth) == 741
    scores = precision_recall(flagged_flows(records), truth)
    assert scores["ai_flows"] == 316
    assert scores["true_positives"] == 316
    assert scores["false_positives"] == 3


def test_syslog_line_format(tmp_path):
    records, _, _ = replay("micropython", tmp_path, "--polls", "60")
    assert records
    record = records[0]
    assert record["tag"] == "aiflowd"
    assert record["facility"] == 3 and record["severity"] == 5  # daemon.notice
    fields = parse_fields(record["message"])
    assert list(fields) == ["event", "proto", "src", "sport", "dst", "dport", "zone", "start",
                            "score", "model", "duration", "c_to_s_pkts", "s_to_c_pkts",
                            "c_to_s_bytes", "s_to_c_bytes"]
    assert fields["event"] == "flagged"
    assert 0.5 < float(fields["score"]) <= 1.0
    assert fields["model"] == _model_id()


def _model_id():
    text = (GENERATED / "aiflowd_model.py").read_text()
    return text.split('MODEL_ID = "', 1)[1].split('"', 1)[0]


def test_threshold_override_flags_fewer(tmp_path, expected):
    records, stats, _ = replay("micropython", tmp_path, "--threshold", "0.95")
    flagged = flagged_flows(records)
    assert set(flagged) < set(expected)
    assert all(float(fields["score"]) > 0.95 for fields in flagged.values())


def test_missing_syslog_socket_keeps_messages(tmp_path):
    command = micropython_command() + [
        "--trace", str(TRACE), "--syslog", str(tmp_path / "absent.sock"),
        "--model", str(GENERATED / "aiflowd_model.py"), "--polls", "40"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0
    lost = [line for line in done.stderr.splitlines() if "Unable to send to syslog" in line]
    assert lost
    assert "message was: event=flagged" in lost[0]


@pytest.mark.parametrize("args, message", [
    (["--interval", "0"], "invalid --interval '0'; expected at least 0.05"),
    (["--min-packets", "x"], "invalid --min-packets 'x'; expected an integer"),
    (["--threshold", "1.5"], "invalid --threshold 1.5; expected a probability in [0, 1)"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--trace"], "option --trace needs a value"),
])
def test_bad_options(args, message):
    done = subprocess.run(micropython_command() + args, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


def test_missing_conntrack_file(tmp_path):
    done = subprocess.run(micropython_command() + ["--conntrack", str(tmp_path / "nf_conntrack"),
                                                   "--model", str(GENERATED / "aiflowd_model.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "cannot open" in done.stderr
    assert "sysctl -w net.netfilter.nf_conntrack_acct=1" in done.stderr


def test_live_file_without_counters_is_reported(tmp_path):
    # A live table with one entry created before accounting was on, and
    # one with counters: the first is skipped with the sysctl to turn on.
    table = tmp_path / "nf_conntrack"
    table.write_text(
        "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.2 dst=198.19.0.2 sport=40000 "
        "dport=443 src=198.19.0.2 dst=198.19.0.1 sport=443 dport=40000 [ASSURED] mark=0 "
        "zone=0 use=2\n"
        "ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.2 dst=198.19.0.2 sport=40001 "
        "dport=443 packets=9 bytes=900 src=198.19.0.2 dst=198.19.0.1 sport=443 dport=40001 "
        "packets=9 bytes=900 [ASSURED] mark=0 zone=0 use=2\n")
    stats_path = tmp_path / "stats.json"
    done = subprocess.run(micropython_command() + [
        "--conntrack", str(table), "--model", str(GENERATED / "aiflowd_model.py"),
        "--syslog", str(tmp_path / "absent.sock"), "--polls", "2", "--interval", "0.05",
        "--stats", str(stats_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "skipping unusable conntrack entries: 1" in done.stderr
    assert "nf_conntrack line 1" in done.stderr
    assert "sysctl -w net.netfilter.nf_conntrack_acct=1" in done.stderr
    assert json.loads(stats_path.read_text())["flows_seen"] == 1


def test_trace_without_counters_names_line(tmp_path):
    # A trace recorded with accounting off: the error must point at the
    # entry's line in the trace file, and a replay that could use no entry
    # at all must fail instead of reporting zero flows.
    entry = ("ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.2 dst=198.19.0.2 "
             "sport=40000 dport=443 src=198.19.0.2 dst=198.19.0.1 sport=443 dport=40000 "
             "[ASSURED] mark=0 zone=0 use=2")
    trace = tmp_path / "noacct.trace"
    trace.write_text("# aiflowd conntrack trace v1\n# recorded without accounting\n"
                     "@ 1796415800.000\n@ 1796415801.000\n+ %s\n@ 1796415802.000\n" % entry)
    stats_path = tmp_path / "stats.json"
    done = subprocess.run(micropython_command() + [
        "--trace", str(trace), "--model", str(GENERATED / "aiflowd_model.py"),
        "--syslog", "none", "--stats", str(stats_path)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "noacct.trace line 5:" in done.stderr
    assert "no usable conntrack entry in" in done.stderr
    assert "sysctl -w net.netfilter.nf_conntrack_acct=1" in done.stderr
    assert json.loads(stats_path.read_text())["flows_seen"] == 0


def test_match_flags_reused_tuple():
    # Two connections on one tuple, 60 s apart: each flag pairs with the
    # connection whose start is nearest, and a flag far from both is unpaired.
    five_tuple = (6, "198.18.0.2", 40000, "198.19.0.2", 443)
    truth = {(five_tuple, 1000.4): 1, (five_tuple, 1060.7): 0}
    pairs = match_flags({(five_tuple, 1000): {}, (five_tuple, 1060): {}, (five_tuple, 1200): {}},
                        truth)
    assert pairs[(five_tuple, 1000)] == (five_tuple, 1000.4)
    assert pairs[(five_tuple, 1060)] == (five_tuple, 1060.7)
    assert pairs[(five_tuple, 1200)] is None
    scores = precision_recall({(five_tuple, 1000): {}, (five_tuple, 1060): {}}, truth)
    assert scores["true_positives"] == 1
    assert scores["false_positives"] == 1
