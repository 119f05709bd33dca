"""Flows as the router sees them: replay a conntrack trace through the flow table.

The router runtime's own FlowTable turns each snapshot into features, so
the values here are exactly what the runtime would score at each poll:

- ``flows_from_trace`` gives one canonical record a flow with its last
  counters (for parity with ndpiReader and for labels);
- ``polls_from_trace`` gives one row for every poll at which a flow's
  counters moved: the prefix view of the flow at that age.
"""

import logging

import pandas as pd

from aiflowd import conntrack
from aiflowd.flowtable import FlowTable, LAST_CHANGE, START, features
from aiflowd.trace import TraceReader
from trainer import flows as flowschema

log = logging.getLogger(__name__)

# The trace replay keeps every flow: its memory is the host's, not a router's.
_UNBOUNDED = 10 ** 9


def _identity(entry):
    return (entry.proto, entry.src, entry.sport, entry.dst, entry.dport)


def replay(path):
    """Yield (timestamp, [(entry, flow)], gone keys) for every snapshot of a trace."""
    table = FlowTable(_UNBOUNDED)
    problems = []
    reader = TraceReader(str(path))
    for timestamp, lines in reader:
        before = set(table.flows)
        changed = table.update(conntrack.parse_lines(lines, str(path), problems, reader.linenos),
                               timestamp)
        gone = before.difference(table.flows)
        yield timestamp, changed, gone
    if problems:
        log.warning("%s: %d entry readings skipped; first: %s", path, len(problems), problems[0])


def flows_from_trace(path, capture_id="", source="conntrack"):
    """Return one canonical flow record a flow of the trace, label -1.

    Only TCP and UDP flows are kept (the features need ports). The record
    holds the flow's counters at its last change; first_seen is its creation
    time (from delta-time, or the first snapshot that listed it).
    """
    latest = {}
    finished = []
    for timestamp, changed, gone in replay(path):
        for entry, flow in changed:
            key = entry.key()
            previous = latest.get(key)
            if previous is not None and previous[1][START] != flow[START]:
                finished.append(previous)  # the tuple was reused by a new connection
            latest[key] = (entry, list(flow))
    rows = []
    for entry, flow in finished + list(latest.values()):
        if entry.proto not in (6, 17) or entry.sport is None:
            continue
        x = features(flow)
        rows.append(_identity(entry) + (flow[START], flow[LAST_CHANGE], x[0], x[1], x[2],
                                        x[3], x[4]))
    table = pd.DataFrame(rows, columns=flowschema.IDENTITY + flowschema.FEATURES)
    table["source"] = source
    table["capture_id"] = capture_id
    table["family"] = ""
    table["scenario"] = ""
    table["encrypted"] = 0
    table["label"] = flowschema.UNKNOWN_LABEL
    return flowschema.conform(table)


def polls_from_trace(path):
    """Return every (flow, poll) at which the flow's counters moved.

    Columns: the 5-tuple, ``time`` (poll epoch seconds), ``age`` (seconds
    since the flow was created) and the five features at that poll.
    """
    rows = []
    for timestamp, changed, gone in replay(path):
        for entry, flow in changed:
            if entry.proto not in (6, 17) or entry.sport is None:
                continue
            rows.append(_identity(entry) + (timestamp, timestamp - flow[START])
                        + tuple(features(flow)))
    columns = ["proto", "src_ip", "src_port", "dst_ip", "dst_port", "time", "age"]
    return pd.DataFrame(rows, columns=columns + list(flowschema.FEATURES))
