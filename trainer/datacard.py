"""Write a capture's data card: how it was made and what it holds."""

import json
from pathlib import Path

from tools.traffic.scenarios import parameter_table_markdown
from trainer import flows as flowschema

_FILES = ("capture.pcap", "capture.pcap.gz", "conntrack.trace", "conntrack.trace.gz",
          "labels.csv", "flows.csv")


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render_card(capture_dir):
    capture_dir = Path(capture_dir)
    meta = json.loads((capture_dir / "capture.json").read_text())
    flows = flowschema.read_flows(capture_dir / "flows.csv")
    config = meta["config"]
    lines = [
        "# Data card: %s" % meta["capture_id"], "",
        "Labeled flows from aiflowd's own testbed: three network namespaces (client, "
        "router with NAT and conntrack accounting, server) on one Linux host, "
        "addresses from 198.18.0.0/15 only. Every flow was opened by aiflowd's traffic "
        "client against aiflowd's traffic server; the client recorded each connection's "
        "label as it opened it.", "",
        "## How it was made", "",
        "    aiflowd capture --out %s --duration %g --concurrency %d --seed %d "
        "--time-scale %g --card%s%s" % (
            capture_dir.name, config["duration"], config["concurrency"], config["seed"],
            config["time_scale"],
            " \\\n        --workers %d --server-processes %d" % (
                config["workers"], config["server_processes"]) if "workers" in config else "",
            " \\\n        --mix %s" % config["mix"] if config.get("mix") else ""),
        "",
        "The same command, with the traffic generator of commit %s, gives the same "
        "session plans (scenarios and their parameters); packet timing differs from run "
        "to run." % (meta.get("generator_commit") or "unknown"), "",
        "- traffic: %.0f s (new sessions for %g s, at most %d at once), whole run %.0f s"
        % (meta["traffic_seconds"], config["duration"], config["concurrency"],
           meta["wall_seconds"]),
        "- capture: tcpdump on the router's client-side veth (full packets, %d dropped); "
        "flows by `ndpiReader -C -v 2`, byte counts reduced by the 14-byte Ethernet header "
        "of each packet to layer-3 bytes" % meta["tcpdump_dropped"],
        "- checks: the capture's packets were counted again by aiflowd's own reader; "
        "%d flows where ndpiReader had put packets in the wrong direction take their "
        "counters from the packets (their `source` says so), %d flows disagree in totals"
        % (meta.get("direction_corrected", 0), meta.get("totals_disagree", 0)),
        "- conntrack: the router's /proc/net/nf_conntrack every %g s (acct and timestamp "
        "on), stored as changes in `conntrack.trace`" % config["trace_interval"],
        "- labels: joined by 5-tuple and time; %d of %d ndpiReader flows labeled; %d flows "
        "left out because ndpiReader merged two connections that reused a client port "
        "(their %d label rows have no flow)" % (
            meta["labeled"], meta["flows"], meta.get("merged_flows", 0),
            meta["unmatched_labels"]),
        "- tools: %s" % ", ".join("%s %s" % (k, v) for k, v in sorted(meta["tools"].items())),
        "",
        "## Counts", "",
    ]
    rows = []
    for (family, scenario, label), group in flows.groupby(["family", "scenario", "label"]):
        rows.append((family, scenario, label, len(group)))
    lines += _table(("family", "scenario", "label", "flows"), rows)
    lines += [""]
    totals = flows.groupby(["family", "label"]).size()
    lines += _table(("family", "label 0 (not AI)", "label 1 (AI)"),
                    [(family, int(totals.get((family, 0), 0)), int(totals.get((family, 1), 0)))
                     for family in sorted(flows["family"].unique())])
    lines += ["", "Total: %d flows, %d AI." % (len(flows), int((flows["label"] == 1).sum())),
              "", "## Feature medians by scenario", ""]
    medians = flows.groupby(["family", "scenario"])[list(flowschema.FEATURES)].median()
    lines += _table(("family", "scenario") + flowschema.FEATURES,
                    [key + tuple("%.3g" % v for v in row) for key, row in
                     zip(medians.index, medians.to_numpy())])
    lines += ["", "## Feature distributions by family and label", "",
              "Percentiles 5, 25, 50, 75 and 95 of each feature (duration in seconds, "
              "packets, layer-3 bytes).", ""]
    rows = []
    for (family, label), group in flows.groupby(["family", "label"]):
        for name in flowschema.FEATURES:
            q = group[name].quantile([0.05, 0.25, 0.5, 0.75, 0.95]).to_numpy()
            rows.append((family, label, name) + tuple("%.3g" % v for v in q))
    lines += _table(("family", "label", "feature", "p5", "p25", "p50", "p75", "p95"), rows)
    lines += ["", "## Scenario parameters", "",
              "Each session's parameters are drawn from these distributions, from a "
              "generator seeded by the run's seed and the session's number.", ""]
    lines.append(parameter_table_markdown().strip())
    lines += ["", "## Files", ""]
    lines += _table(("file", "bytes"), [(name, (capture_dir / name).stat().st_size)
                                        for name in _FILES if (capture_dir / name).exists()])
    if "pcap_bytes" in meta and not any((capture_dir / name).exists()
                                        for name in ("capture.pcap", "capture.pcap.gz")):
        lines += ["", "The packet capture (%d bytes gzip-compressed) is not included: it "
                  "is larger than the repository's 20 MB budget for captures."
                  % meta["pcap_bytes"]]
    lines.append("")
    return "\n".join(lines)


def write_card(capture_dir):
    path = Path(capture_dir) / "CARD.md"
    path.write_text(render_card(capture_dir))
    return path
