"""Read flows from nDPI's ndpiReader into canonical flow records.

ndpiReader ``-C`` writes one CSV row a flow. Its byte counts sum each
packet's captured length, link-layer header included, while a router's
conntrack counts layer-3 bytes; ``read_ndpi_csv`` subtracts the link header
once per packet so both sources agree. The header line tells the format:
nDPI 4.2 (Debian 12) separates fields with ``,``, releases from 4.10 on with
``|``, and text fields are never quoted.
"""

import logging
import shutil
import struct
import subprocess
from pathlib import Path

import pandas as pd

from trainer import flows as flowschema

log = logging.getLogger(__name__)

# Bytes of link-layer header a packet, by pcap LINKTYPE_ value
# (https://www.tcpdump.org/linktypes.html).
LINK_HEADER_BYTES = {
    0: 4,      # NULL (BSD loopback)
    1: 14,     # ETHERNET (also Linux veth and loopback captures)
    12: 0,     # RAW on some platforms
    14: 0,     # RAW on some platforms
    101: 0,    # RAW
    108: 4,    # LOOP (OpenBSD loopback)
    113: 16,   # LINUX_SLL
    228: 0,    # IPV4
    229: 0,    # IPV6
    276: 20,   # LINUX_SLL2
}

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",   # microsecond timestamps
    b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">",   # nanosecond timestamps
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"

# Columns taken from the ndpiReader CSV. Every one of them comes before the
# first free-text column, so an unquoted separator inside a later text field
# (server_info, flow_info) cannot shift them.
_NEEDED = ("protocol", "first_seen", "last_seen", "duration", "src_ip", "src_port",
           "dst_ip", "dst_port", "ndpi_proto", "c_to_s_pkts", "c_to_s_bytes",
           "s_to_c_pkts", "s_to_c_bytes")


class NdpiError(ValueError):
    """Input from ndpiReader (a pcap or its CSV) that cannot be read."""


def pcap_link_type(path):
    """Return the LINKTYPE_ value of a pcap or pcapng file.

    Raises NdpiError when the file is neither, or when a pcapng file mixes
    interfaces of different link types.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            raise NdpiError("%s: too short to be a pcap file (%d bytes)" % (path, len(head)))
        order = _PCAP_MAGICS.get(head[:4])
        if order is not None:
            return struct.unpack(order + "I", head[20:24])[0] & 0x0FFFFFFF
        if head[:4] != _PCAPNG_SHB:
            raise NdpiError("%s: not a pcap or pcapng file (magic %s)" % (path, head[:4].hex()))
        return _pcapng_link_type(path, f)


def _pcapng_link_type(path, f):
    f.seek(0)
    data = f.read()
    order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    link_types = set()
    offset = 0
    while offset + 12 <= len(data):
        block_type, block_len = struct.unpack_from(order + "II", data, offset)
        if block_len < 12:
            raise NdpiError("%s: corrupt pcapng block at byte %d" % (path, offset))
        if block_type == 1:  # Interface Description Block
            link_types.add(struct.unpack_from(order + "H", data, offset + 8)[0])
        offset += block_len
    if not link_types:
        raise NdpiError("%s: pcapng file has no interface description block" % path)
    if len(link_types) > 1:
        raise NdpiError("%s: interfaces of several link types %s; split the capture by "
                        "interface first" % (path, sorted(link_types)))
    return link_types.pop()


def link_header_bytes(path):
    """Return the link-layer header length a packet for the capture at ``path``."""
    link_type = pcap_link_type(path)
    if link_type not in LINK_HEADER_BYTES:
        raise NdpiError("%s: link type %d is not supported; supported link types are %s"
                        % (path, link_type, sorted(LINK_HEADER_BYTES)))
    return LINK_HEADER_BYTES[link_type]


def require_ndpireader(ndpireader="ndpiReader"):
    """Return the path of the ndpiReader program, or raise NdpiError saying how to get it."""
    exe = shutil.which(ndpireader)
    if exe is None:
        raise NdpiError("%s not found on PATH; install it (Debian: apt-get install "
                        "libndpi-bin)" % ndpireader)
    return exe


def run_ndpireader(pcap, csv_out, ndpireader="ndpiReader"):
    """Run ``ndpiReader -C`` on a capture and return the CSV path.

    ``-v 2`` is passed because ndpiReader 4.2 otherwise leaves flows of
    unrecognised protocols out of the CSV.
    """
    exe = require_ndpireader(ndpireader)
    csv_out = Path(csv_out)
    csv_out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "-i", str(pcap), "-C", str(csv_out), "-v", "2", "-q"]
    log.debug("running %s", " ".join(cmd))
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0 or not csv_out.is_file():
        raise NdpiError("ndpiReader failed on %s (exit %d): %s"
                        % (pcap, done.returncode, done.stderr.strip()[-500:]))
    return csv_out


def _split_header(line, path):
    if not line.startswith("#flow_id"):
        raise NdpiError("%s line 1: not an ndpiReader CSV header (expected it to start "
                        "with '#flow_id'): %r" % (path, line[:80]))
    separator = line[len("#flow_id")]
    if separator not in ",|":
        raise NdpiError("%s line 1: unknown field separator %r after '#flow_id'; "
                        "expected ',' (nDPI <= 4.8) or '|' (nDPI >= 4.10)" % (path, separator))
    names = line.lstrip("#").rstrip("\r\n").split(separator)
    missing = [name for name in _NEEDED if name not in names]
    if missing:
        raise NdpiError("%s line 1: header lacks column(s) %s; this reader needs %s"
                        % (path, ", ".join(missing), ", ".join(_NEEDED)))
    return separator, names


def read_ndpi_csv(path, link_header, source="ndpiReader", capture_id=""):
    """Read an ndpiReader CSV into a canonical flow table with label -1.

    ``link_header`` is the link-layer header length a packet of the capture
    the CSV came from (14 for Ethernet; see ``link_header_bytes``). Raises
    NdpiError naming the file, line and column of the first value that does
    not parse, or a byte count smaller than its packets' link headers.
    """
    path = Path(path)
    if not path.is_file():
        raise NdpiError("ndpiReader CSV %s not found; make it with "
                        "'ndpiReader -i CAPTURE -C %s -v 2'" % (path, path))
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    if not lines:
        raise NdpiError("%s is empty; expected an ndpiReader CSV header line" % path)
    separator, names = _split_header(lines[0], path)
    index = {name: names.index(name) for name in _NEEDED}
    last_needed = max(index.values())

    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split(separator)
        if len(fields) <= last_needed:
            raise NdpiError("%s line %d: %d fields, expected %d as in the header; the row "
                            "is truncated" % (path, lineno, len(fields), len(names)))
        rows.append(_flow_from_fields(fields, index, link_header, path, lineno))

    table = pd.DataFrame(rows, columns=flowschema.IDENTITY + flowschema.FEATURES)
    table["source"] = source
    table["capture_id"] = capture_id
    table["family"] = ""
    table["scenario"] = ""
    table["encrypted"] = 0
    table["label"] = flowschema.UNKNOWN_LABEL
    log.info("read %d flows from %s (link header %d bytes a packet)",
             len(table), path, link_header)
    return flowschema.conform(table)


def _flow_from_fields(fields, index, link_header, path, lineno):
    def number(name, kind):
        text = fields[index[name]]
        try:
            return kind(text)
        except ValueError:
            raise NdpiError("%s line %d: invalid %s value %r; expected %s"
                            % (path, lineno, name, text,
                               "an integer" if kind is int else "a number")) from None

    c_pkts = number("c_to_s_pkts", int)
    s_pkts = number("s_to_c_pkts", int)
    # NOTE: a fixed header a packet is exact for veth and loopback captures.
    # On a real Ethernet capture, VLAN tags and the padding of frames under
    # 60 bytes are counted too and stay in the result; trainer.pcapviews
    # counts IP total lengths instead.
    c_bytes = number("c_to_s_bytes", int) - link_header * c_pkts
    s_bytes = number("s_to_c_bytes", int) - link_header * s_pkts
    if c_bytes < 0 or s_bytes < 0:
        raise NdpiError("%s line %d: byte counts (%s, %s) are smaller than %d link-header "
                        "bytes a packet; is the link header length right for this capture?"
                        % (path, lineno, fields[index["c_to_s_bytes"]],
                           fields[index["s_to_c_bytes"]], link_header))
    return (
        number("protocol", int),
        fields[index["src_ip"]],
        number("src_port", int),
        fields[index["dst_ip"]],
        number("dst_port", int),
        number("first_seen", float),
        number("last_seen", float),
        number("duration", float),
        c_pkts,
        s_pkts,
        c_bytes,
        s_bytes,
    )


def flows_from_pcap(pcap, workdir, capture_id=""):
    """Run ndpiReader on ``pcap`` and return its flows in canonical form."""
    pcap = Path(pcap)
    csv_path = run_ndpireader(pcap, Path(workdir) / (pcap.name + ".ndpi.csv"))
    return read_ndpi_csv(csv_path, link_header_bytes(pcap), capture_id=capture_id or pcap.stem)
