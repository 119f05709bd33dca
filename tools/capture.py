"""Make a labeled capture: testbed traffic to pcap, conntrack trace and flows.

One run builds the testbed, starts the traffic server and the capture
(tcpdump on the router's client-side interface, and a conntrack snapshot of
the router every second), runs the traffic client, stops everything, then
reads the pcap with ndpiReader and joins the generator's labels to the flows
by 5-tuple. The output directory then holds::

    capture.pcap.gz      packets as the router received them from the client
    conntrack.trace.gz   the router's conntrack table, one snapshot a second
    labels.csv        the generator's label for every connection it opened
    flows.csv         canonical flow records from ndpiReader, labeled
    capture.json      parameters, timings, counts and tool versions
"""

import gzip
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tools import testbed as tb
from trainer import labels as labeling
from trainer import ndpi, pcapviews
from trainer.flows import write_flows

log = logging.getLogger(__name__)

WS_PORT = 80
WSS_PORT = 443
HTTPS_PORT = 8443

# Seconds to keep capturing after the client exits, so that the last FIN and
# ACK packets are in the pcap and the conntrack trace sees final counters.
LINGER = 3.0


@dataclass
class CaptureConfig:
    duration: float = 240.0      # seconds during which new sessions start
    concurrency: int = 32        # sessions at once
    seed: int = 1
    time_scale: float = 1.0      # >1 compresses think times and pacing
    trace_interval: float = 1.0  # seconds between conntrack snapshots
    capture_id: str = ""
    mix: str = ""                # client --mix; empty for the client's default
    workers: int = 1             # client worker processes
    server_processes: int = 1    # server processes sharing the WebSocket ports


class CaptureError(RuntimeError):
    pass


def _wait_for_file(path, process, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            return
        if process.poll() is not None:
            raise CaptureError("%s exited with status %d before it was ready; see its log"
                               % (what, process.returncode))
        time.sleep(0.1)
    raise CaptureError("%s not ready after %.0f s (no %s)" % (what, timeout, path))


def _wait_for_line(stream_path, text, process, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stream_path.exists() and text in stream_path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise CaptureError("%s exited with status %d: %s" % (
                what, process.returncode, stream_path.read_text(errors="replace")[-400:]))
        time.sleep(0.1)
    raise CaptureError("%s did not report %r within %.0f s" % (what, text, timeout))


def run_traffic(bed, out_dir, config, workdir):
    """Run server, captures and client in a testbed that is up; return timings."""
    python = sys.executable
    pcap = out_dir / "capture.pcap"
    labels = out_dir / "labels.csv"
    trace = out_dir / "conntrack.trace"
    logs = Path(workdir)
    tls_dir = logs / "tls"
    ready = logs / "server.ready"

    def log_file(name):
        return open(logs / name, "w")

    # The server writes a fresh test CA and certificate into tls_dir.
    server = bed.spawn(bed.server, [
        python, "-m", "tools.traffic.server", "--host", tb.SERVER_IP,
        "--ws-port", str(WS_PORT), "--wss-port", str(WSS_PORT),
        "--https-port", str(HTTPS_PORT), "--tls-dir", str(tls_dir),
        "--ready-file", str(ready), "--processes", str(config.server_processes)],
        stdout=log_file("server.log"), stderr=subprocess.STDOUT)
    _wait_for_file(ready, server, 30, "traffic server")

    tcpdump_log = logs / "tcpdump.log"
    # -Z root: tcpdump would otherwise drop to user tcpdump, who may not be
    # able to write the output directory. -s 0: whole packets, because
    # ndpiReader counts captured bytes.
    tcpdump = bed.spawn(bed.router, [
        "tcpdump", "-i", tb.CAPTURE_INTERFACE, "-w", str(pcap), "-s", "0", "-n", "-U",
        "-Z", "root", "--immediate-mode"],
        stdout=subprocess.DEVNULL, stderr=open(tcpdump_log, "w"))
    _wait_for_line(tcpdump_log, "listening on", tcpdump, 15, "tcpdump")

    ctrace = bed.spawn(bed.router, [
        python, "-m", "tools.ctrace", "--out", str(trace),
        "--interval", str(config.trace_interval)],
        stdout=log_file("ctrace.log"), stderr=subprocess.STDOUT)

    started = time.time()
    log.info("starting sessions for %.0f s, %d at once (seed %d, time scale %g); running "
             "sessions then finish; progress in %s", config.duration, config.concurrency,
             config.seed, config.time_scale, logs / "client.log")
    client = bed.spawn(bed.client, [
        python, "-m", "tools.traffic.client", "--server", tb.SERVER_IP,
        "--ca", str(tls_dir / "ca.pem"), "--labels", str(labels),
        "--duration", str(config.duration), "--concurrency", str(config.concurrency),
        "--seed", str(config.seed), "--time-scale", str(config.time_scale),
        "--workers", str(config.workers),
        "--ws-port", str(WS_PORT), "--wss-port", str(WSS_PORT),
        "--https-port", str(HTTPS_PORT)] + (["--mix", config.mix] if config.mix else []),
        stdout=log_file("client.log"), stderr=subprocess.STDOUT)
    relay = _ProgressRelay(logs / "client.log")
    relay.start()
    # The client stops starting sessions at --duration; running sessions end
    # within their own bound, so allow it a generous margin before giving up.
    limit = config.duration + 600
    try:
        client_status = client.wait(limit)
    except subprocess.TimeoutExpired:
        raise CaptureError("traffic client still running %.0f s after its duration; "
                           "see %s" % (limit - config.duration, logs / "client.log"))
    finally:
        relay.done.set()
    traffic_end = time.time()
    time.sleep(LINGER)

    tb.stop_process(ctrace, timeout=15)
    tb.stop_process(tcpdump, sig=2, timeout=15)  # SIGINT: flush and print stats
    tb.stop_process(server, timeout=15)
    if client_status != 0:
        raise CaptureError("traffic client failed with status %d; see %s"
                           % (client_status, logs / "client.log"))
    stats = tcpdump_log.read_text(errors="replace")
    dropped = _tcpdump_dropped(stats)
    if dropped:
        log.warning("tcpdump dropped %d packets; flow counters from the pcap will be short",
                    dropped)
    return {"traffic_seconds": round(traffic_end - started, 1),
            "tcpdump_dropped": dropped}


class _ProgressRelay(threading.Thread):
    """Repeat the traffic client's progress lines from its log file on our log."""

    def __init__(self, path, marker=": progress at "):
        super().__init__(name="progress-relay", daemon=True)
        self.path = path
        self.marker = marker
        self.done = threading.Event()

    def run(self):
        position = 0
        while not self.done.wait(1.0):
            try:
                with open(self.path, "rb") as f:
                    f.seek(position)
                    data = f.read()
            except FileNotFoundError:
                continue
            # A partly written last line waits for the next read.
            end = data.rfind(b"\n") + 1
            position += end
            for line in data[:end].decode(errors="replace").splitlines():
                if self.marker in line:
                    log.info("traffic progress at %s", line.split(self.marker, 1)[1])


def _tcpdump_dropped(stats):
    for line in stats.splitlines():
        if "dropped by kernel" in line:
            return int(line.split()[0])
    return 0


def make_capture(out_dir, config):
    """Run a whole capture into ``out_dir`` and return its summary dict."""
    tb.require_root("a capture")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    capture_id = config.capture_id or out_dir.name
    begun = time.time()
    with tempfile.TemporaryDirectory(prefix="aiflowd-capture-") as workdir:
        with tb.Testbed() as bed:
            timings = run_traffic(bed, out_dir, config, workdir)
        summary = extract(out_dir, capture_id, workdir)
        for name in ("capture.pcap", "conntrack.trace"):
            compress(out_dir / name)
        logs = Path(workdir)
        for name in ("client.log", "server.log"):
            if (logs / name).exists():
                (out_dir / name).write_text((logs / name).read_text(errors="replace"))
    summary.update(timings)
    summary["config"] = asdict(config)
    pcap = out_dir / "capture.pcap.gz"
    if pcap.exists():
        summary["pcap_bytes"] = pcap.stat().st_size
    summary["capture_id"] = capture_id
    summary["wall_seconds"] = round(time.time() - begun, 1)
    summary["tools"] = tool_versions()
    summary["generator_commit"] = source_commit()
    (out_dir / "capture.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    log.info("capture %s done in %.0f s: %d flows, %d labeled",
             capture_id, summary["wall_seconds"], summary["flows"], summary["labeled"])
    return summary


def compress(path):
    """Replace ``path`` by ``path``.gz, reproducibly (no name or time in the header)."""
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as source, open(target, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
            shutil.copyfileobj(source, out)
    path.unlink()
    return target


def capture_file(capture_dir, name):
    """Return the path of ``name`` or ``name``.gz in a capture directory."""
    plain = Path(capture_dir) / name
    packed = plain.with_name(name + ".gz")
    if plain.exists():
        return plain
    if packed.exists():
        return packed
    raise FileNotFoundError("%s has no %s or %s.gz; make the capture with 'aiflowd capture'"
                            % (capture_dir, name, name))


def extract(out_dir, capture_id, workdir):
    """Turn the pcap and labels.csv in ``out_dir`` into a labeled flows.csv."""
    out_dir = Path(out_dir)
    pcap = capture_file(out_dir, "capture.pcap")
    if pcap.suffix == ".gz":
        # ndpiReader reads only plain pcap files.
        plain = Path(workdir) / "capture.pcap"
        with gzip.open(pcap, "rb") as source, open(plain, "wb") as out:
            shutil.copyfileobj(source, out)
        pcap = plain
    flows = ndpi.flows_from_pcap(pcap, workdir, capture_id=capture_id)
    log.info("counting the packets of %s to check ndpiReader's directions", pcap.name)
    packet_flows, _ = pcapviews.pcap_flows_and_views(pcap)
    flows, corrected, disagree = pcapviews.reconcile_directions(flows, packet_flows)
    if corrected:
        log.warning("ndpiReader put packets of %d flows in the wrong direction; their "
                    "counters come from the packets", corrected)
    if disagree:
        log.warning("%d flows have other packet or byte totals in ndpiReader than in the "
                    "capture's packets; kept as ndpiReader reports them", disagree)
    labels = labeling.read_labels(out_dir / "labels.csv")
    flows, report = labeling.join_labels(flows, labels)
    for flow in report.unlabeled[:10]:
        log.warning("flow without a generator label: %s", flow)
    for flow in report.merged[:10]:
        log.warning("flow left out, it merges connections that reused a client port: %s", flow)
    for row in report.unmatched_labels[:10]:
        log.warning("label row without a captured flow: %s", row)
    flows = flows[flows["label"] >= 0]
    write_flows(flows, out_dir / "flows.csv")
    return {"flows": report.flows, "labeled": report.labeled,
            "direction_corrected": corrected, "totals_disagree": disagree,
            "unlabeled_flows": len(report.unlabeled),
            "merged_flows": len(report.merged),
            "unmatched_labels": len(report.unmatched_labels),
            "label_rows": len(labels)}


def source_commit():
    """Return the git commit of this checkout (with '+changes' when it is modified), or ''."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tools"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return commit + ("+changes" if commit and dirty else "")


def tool_versions():
    versions = {"python": platform.python_version(), "kernel": platform.release()}
    for name, argv in (("ndpiReader", ["ndpiReader", "-h"]),
                       ("tcpdump", ["tcpdump", "--version"])):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r"\d+\.\d+(\.\d+)?", done.stdout + done.stderr)
        if match:
            versions[name] = match.group(0)
    return versions
