"""The canonical flow record that every source is read into.

A flow record has three groups of columns:

- identity: ``proto`` (IP protocol number), ``src_ip``, ``src_port``,
  ``dst_ip``, ``dst_port`` with the client (the side that opened the flow)
  as source, and ``first_seen``/``last_seen`` in epoch seconds;
- the five model features, in this order: ``duration`` (seconds),
  ``c_to_s_pkts``, ``s_to_c_pkts`` (packets), ``c_to_s_bytes``,
  ``s_to_c_bytes`` (layer-3 bytes: the sum of IP total lengths, which is what
  conntrack counts on a router);
- provenance: ``source``, ``capture_id``, ``family``, ``scenario``,
  ``encrypted`` and ``label`` (1 = AI, 0 = not AI, -1 = unknown).
"""

import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

FEATURES = ("duration", "c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes")

FEATURE_UNITS = {
    "duration": "s",
    "c_to_s_pkts": "packets",
    "s_to_c_pkts": "packets",
    "c_to_s_bytes": "bytes (layer 3)",
    "s_to_c_bytes": "bytes (layer 3)",
}

IDENTITY = ("proto", "src_ip", "src_port", "dst_ip", "dst_port", "first_seen", "last_seen")
PROVENANCE = ("source", "capture_id", "family", "scenario", "encrypted", "label")
COLUMNS = IDENTITY + FEATURES + PROVENANCE

# Families the per-family models are trained for: WebSocket over TCP, over
# TLS, and HTTPS (MCP's Streamable HTTP against ordinary HTTPS).
FAMILIES = ("ws", "wss", "mcp")

UNKNOWN_LABEL = -1

_DTYPES = {
    "proto": "int64",
    "src_ip": "string",
    "src_port": "int64",
    "dst_ip": "string",
    "dst_port": "int64",
    "first_seen": "float64",
    "last_seen": "float64",
    "duration": "float64",
    "c_to_s_pkts": "int64",
    "s_to_c_pkts": "int64",
    "c_to_s_bytes": "int64",
    "s_to_c_bytes": "int64",
    "source": "string",
    "capture_id": "string",
    "family": "string",
    "scenario": "string",
    "encrypted": "int64",
    "label": "int64",
}


class FlowFileError(ValueError):
    """A flow table file that does not follow the canonical schema."""


def empty_flows():
    """Return an empty flow table with the canonical columns and types."""
    return pd.DataFrame({name: pd.Series(dtype=_DTYPES[name]) for name in COLUMNS})


def conform(flows):
    """Return ``flows`` with the canonical column order and types.

    Raises FlowFileError naming the first missing column.
    """
    missing = [name for name in COLUMNS if name not in flows.columns]
    if missing:
        raise FlowFileError(
            "flow table is missing column(s) %s; expected the canonical columns %s"
            % (", ".join(missing), ", ".join(COLUMNS)))
    return flows.loc[:, list(COLUMNS)].astype(_DTYPES)


def read_flows(path):
    """Read a canonical flow CSV, checking columns, types and value ranges.

    Raises FlowFileError with the file, line and column of the first bad
    value, so the row can be fixed or removed by hand.
    """
    path = Path(path)
    if not path.is_file():
        raise FlowFileError("flow file %s not found; make one with 'aiflowd capture' "
                            "or point to an existing CSV" % path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [name for name in COLUMNS if name not in raw.columns]
    if missing:
        raise FlowFileError("%s: missing column(s) %s in the header, which has %s; a canonical "
                            "flow CSV has %s" % (path, ", ".join(missing),
                                                 ", ".join(raw.columns) or "no columns",
                                                 ", ".join(COLUMNS)))
    for name in COLUMNS:
        kind = _DTYPES[name]
        if kind == "string":
            continue
        numbers = pd.to_numeric(raw[name], errors="coerce")
        bad = numbers.isna()
        if kind == "int64":
            bad |= numbers.notna() & (numbers != numbers.round())
        if name in FEATURES:
            bad |= numbers < 0
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            # Line 1 is the header, so data row i sits on line i + 2.
            raise FlowFileError(
                "%s line %d: invalid %s value %r; expected a%s number%s"
                % (path, row + 2, name, raw[name].iloc[row],
                   "n integer" if kind == "int64" else "",
                   " >= 0" if name in FEATURES else ""))
    labels = pd.to_numeric(raw["label"])
    bad = ~labels.isin((0, 1, UNKNOWN_LABEL))
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise FlowFileError("%s line %d: invalid label %r; expected 1 (AI), 0 (not AI) "
                            "or -1 (unknown)" % (path, row + 2, raw["label"].iloc[row]))
    return conform(raw)


def write_flows(flows, path):
    """Write a flow table as canonical CSV; durations keep millisecond precision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conform(flows).to_csv(path, index=False, float_format="%.6f")
    log.info("wrote %d flows to %s", len(flows), path)
    return path


def feature_matrix(flows):
    """Return the five features as a float64 array of shape (n_flows, 5)."""
    return flows.loc[:, list(FEATURES)].to_numpy(dtype="float64")
