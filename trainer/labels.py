"""Join the traffic generator's labels to measured flows by 5-tuple.

The generator writes one row for every TCP connection it opened: the
5-tuple as the client saw it, family, scenario, label and the connection's
open and close times. A measured flow (from ndpiReader or conntrack) takes
the label of the row with the same 5-tuple whose time span overlaps its own;
the time check keeps a reused client port from inheriting an older label.

When a client port is reused within a capture, ndpiReader 4.2 merges the two
connections into one flow whose time span covers both label rows. Such a
flow has the features of neither connection, so it stays unlabeled and is
listed as merged.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trainer import flows as flowschema

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("proto", "src_ip", "src_port", "dst_ip", "dst_port", "family",
                 "scenario", "label", "encrypted", "session", "start", "end")
TUPLE = ["proto", "src_ip", "src_port", "dst_ip", "dst_port"]

# Seconds of clock slack allowed between the generator's connect/close times
# and the capture's first/last packet times; both come from the same host
# clock, so the slack only covers the handshake and teardown.
TIME_SLACK = 2.0


class LabelError(ValueError):
    """A labels file that cannot be read."""


@dataclass
class JoinReport:
    flows: int = 0
    labeled: int = 0
    unlabeled: list = field(default_factory=list)
    merged: list = field(default_factory=list)
    unmatched_labels: list = field(default_factory=list)

    def summary(self):
        return ("%d of %d flows labeled; %d flows without a label, %d flows merged from "
                "connections that reused a client port, %d label rows without a flow"
                % (self.labeled, self.flows, len(self.unlabeled), len(self.merged),
                   len(self.unmatched_labels)))


def read_labels(path):
    """Read a generator labels CSV, checking its columns and label values."""
    path = Path(path)
    if not path.is_file():
        raise LabelError("labels file %s not found; the traffic client writes it "
                         "with --labels" % path)
    table = pd.read_csv(path)
    missing = [name for name in LABEL_COLUMNS if name not in table.columns]
    if missing:
        raise LabelError("%s: missing column(s) %s; expected %s"
                         % (path, ", ".join(missing), ", ".join(LABEL_COLUMNS)))
    bad = ~table["label"].isin((0, 1))
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise LabelError("%s line %d: invalid label %r; expected 0 or 1"
                         % (path, row + 2, table["label"].iloc[row]))
    table["src_ip"] = table["src_ip"].astype(str)
    table["dst_ip"] = table["dst_ip"].astype(str)
    return table


def join_labels(flows, labels, slack=TIME_SLACK):
    """Return (flows with family/scenario/encrypted/label set, JoinReport).

    Flows with no matching label row keep label -1; they are listed in the
    report, as are label rows that matched no flow.
    """
    flows = flows.reset_index(drop=True).copy()
    left = flows[TUPLE + ["first_seen", "last_seen"]].copy()
    left["flow_index"] = left.index
    left["src_ip"] = left["src_ip"].astype(str)
    left["dst_ip"] = left["dst_ip"].astype(str)
    right = labels.reset_index(drop=True).copy()
    right["label_index"] = right.index
    pairs = left.merge(right, on=TUPLE, how="inner")
    overlap = (pd.concat([pairs["last_seen"], pairs["end"] + slack], axis=1).min(axis=1)
               - pd.concat([pairs["first_seen"], pairs["start"] - slack], axis=1).max(axis=1))
    pairs = pairs.assign(overlap=overlap)
    pairs = pairs[pairs["overlap"] >= 0]
    rows_per_flow = pairs.groupby("flow_index").size()
    merged = rows_per_flow.index[rows_per_flow > 1]
    pairs = pairs[~pairs["flow_index"].isin(merged)]
    best = pairs.drop_duplicates("flow_index")

    for name in ("family", "scenario", "encrypted", "label"):
        flows.loc[best["flow_index"].to_numpy(), name] = best[name].to_numpy()
    flows = flowschema.conform(flows)

    report = JoinReport(flows=len(flows), labeled=len(best))
    unlabeled = flows.index.difference(best["flow_index"]).difference(merged)
    report.unlabeled = [tuple(row) for row in flows.loc[unlabeled, TUPLE].itertuples(index=False)]
    report.merged = [tuple(row) for row in flows.loc[merged, TUPLE].itertuples(index=False)]
    unmatched = right.index.difference(best["label_index"])
    report.unmatched_labels = [tuple(row) for row in
                               right.loc[unmatched, TUPLE + ["scenario"]].itertuples(index=False)]
    log.info("label join: %s", report.summary())
    return flows, report
