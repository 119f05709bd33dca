"""Router views of the flows in a packet capture.

A router polls conntrack once a second and reads each flow's cumulative
counters at that moment. ``pcap_flows_and_views`` replays a capture the same way: it
groups packets into flows (the client is the sender of a flow's first
packet, as in conntrack's original direction), counts packets and layer-3
bytes per direction, and emits one view at every 1 s tick at which a flow's
counters moved. The view's duration runs from the flow's first packet to
that tick, as the runtime's does from the entry's creation to the poll that
saw the change.

It reads pcap and pcapng files with Ethernet, Linux cooked (v1 and v2), raw
IP and BSD loopback link types, IPv4 and IPv6, TCP and UDP. Other packets
(ARP, ICMP, fragments after the first) are counted as skipped.
"""

import logging
import struct
from pathlib import Path

import pandas as pd

from trainer import ndpi
from trainer.flows import FEATURES

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0

_ETHERTYPE_IPV4 = 0x0800
_ETHERTYPE_IPV6 = 0x86DD
_ETHERTYPE_VLAN = (0x8100, 0x88A8)


def read_packets(path):
    """Yield (timestamp, link type, frame bytes) for every packet of a capture."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        yield from _pcapng_packets(data, path)
        return
    order = ndpi._PCAP_MAGICS.get(data[:4])
    if order is None:
        raise ndpi.NdpiError("%s: not a pcap or pcapng file (magic %s)" % (path, data[:4].hex()))
    nanoseconds = data[:4] in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    link_type = struct.unpack_from(order + "I", data, 20)[0] & 0x0FFFFFFF
    divisor = 1e9 if nanoseconds else 1e6
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, caplen, _ = struct.unpack_from(order + "IIII", data, offset)
        offset += 16
        yield seconds + fraction / divisor, link_type, data[offset:offset + caplen]
        offset += caplen


def _pcapng_packets(data, path):
    order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    interfaces = []  # (link type, seconds per timestamp unit)
    offset = 0
    while offset + 12 <= len(data):
        block_type, block_len = struct.unpack_from(order + "II", data, offset)
        if block_len < 12:
            raise ndpi.NdpiError("%s: corrupt pcapng block at byte %d" % (path, offset))
        if block_type == 0x0A0D0D0A:
            order = "<" if data[offset + 8:offset + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = []
        elif block_type == 1:
            link_type = struct.unpack_from(order + "H", data, offset + 8)[0]
            interfaces.append([link_type, _if_tsresol(data, offset, block_len, order)])
        elif block_type == 6:
            interface, high, low, caplen = struct.unpack_from(order + "IIII", data, offset + 8)
            link_type, unit = interfaces[interface]
            frame = data[offset + 28:offset + 28 + caplen]
            yield ((high << 32) | low) * unit, link_type, frame
        offset += block_len


def _if_tsresol(data, offset, block_len, order):
    # Interface options start after link type, reserved and snaplen (8 bytes).
    position = offset + 16
    end = offset + block_len - 4
    while position + 4 <= end:
        code, length = struct.unpack_from(order + "HH", data, position)
        if code == 0:
            break
        if code == 9 and length >= 1:
            value = data[position + 4]
            if value & 0x80:
                return 2.0 ** -(value & 0x7F)
            return 10.0 ** -value
        position += 4 + (length + 3) // 4 * 4
    return 1e-6


def _network_layer(link_type, frame):
    """Return the IP packet inside a link-layer frame, or None."""
    if link_type == 1:
        ethertype = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
        offset = 14
        while ethertype in _ETHERTYPE_VLAN and len(frame) >= offset + 4:
            ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
            offset += 4
        return frame[offset:] if ethertype in (_ETHERTYPE_IPV4, _ETHERTYPE_IPV6) else None
    if link_type == 113:
        return frame[16:] if len(frame) >= 16 else None
    if link_type == 276:
        return frame[20:] if len(frame) >= 20 else None
    if link_type in (0, 108):
        return frame[4:] if len(frame) >= 4 else None
    if link_type in (12, 14, 101, 228, 229):
        return frame
    return None


def parse_ip(packet):
    """Return (proto, src, sport, dst, dport, layer-3 length) or None for other packets."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        header = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        fragment = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
        proto = packet[9]
        if fragment:
            return None
        src = ".".join(str(b) for b in packet[12:16])
        dst = ".".join(str(b) for b in packet[16:20])
    elif version == 6 and len(packet) >= 40:
        header = 40
        total = 40 + struct.unpack_from("!H", packet, 4)[0]
        proto = packet[6]
        src = _ipv6_text(packet[8:24])
        dst = _ipv6_text(packet[24:40])
    else:
        return None
    if proto not in (6, 17) or len(packet) < header + 4:
        return None
    sport, dport = struct.unpack_from("!HH", packet, header)
    return proto, src, sport, dst, dport, total


def _ipv6_text(raw):
    return ":".join("%x" % struct.unpack_from("!H", raw, i)[0] for i in range(0, 16, 2))


def pcap_flows_and_views(path, interval=POLL_INTERVAL):
    """Return (flows, views) DataFrames for a capture.

    ``flows`` has one row a flow with its final counters; ``views`` one row
    for every poll tick at which a flow's counters moved, with ``flow`` (the
    row of ``flows``), ``age`` and the five features.
    """
    # NOTE: a flow is one 5-tuple for the whole capture. Conntrack would end
    # an idle UDP entry after 30 to 120 s and start a new one, so ages of
    # long-idle flows here exceed what a router reports.
    flows = {}
    order = []
    views = []
    moved = {}  # flows whose counters moved since the last tick, by index
    skipped = 0
    tick = None
    for timestamp, link_type, frame in read_packets(path):
        packet = _network_layer(link_type, frame)
        parsed = parse_ip(packet) if packet is not None else None
        if parsed is None:
            skipped += 1
            continue
        if tick is None:
            tick = (timestamp // interval + 1) * interval
        if timestamp >= tick:
            _emit_views(moved, views, tick)
            # Ticks without any packet would emit nothing, so skip them.
            tick = (timestamp // interval + 1) * interval
        proto, src, sport, dst, dport, length = parsed
        key = (proto, src, sport, dst, dport)
        flow = flows.get(key)
        side = 0
        if flow is None:
            flow = flows.get((proto, dst, dport, src, sport))
            side = 1
        if flow is None:
            flow = {"index": len(order), "key": key, "first": timestamp, "counters": [0, 0, 0, 0]}
            flows[key] = flow
            order.append(flow)
            side = 0
        moved[flow["index"]] = flow
        flow["last"] = timestamp
        flow["counters"][side] += 1
        flow["counters"][2 + side] += length
    if tick is not None:
        _emit_views(moved, views, tick)
    if skipped:
        log.debug("%s: %d packets were not TCP or UDP over IP", path, skipped)

    rows = []
    for flow in order:
        c_pkts, s_pkts, c_bytes, s_bytes = flow["counters"]
        rows.append(flow["key"] + (flow["first"], flow["last"], flow["last"] - flow["first"],
                                   c_pkts, s_pkts, c_bytes, s_bytes))
    flow_table = pd.DataFrame(rows, columns=["proto", "src_ip", "src_port", "dst_ip", "dst_port",
                                             "first_seen", "last_seen"] + list(FEATURES))
    view_table = pd.DataFrame(views, columns=["flow", "age"] + list(FEATURES))
    return flow_table, view_table


def _emit_views(moved, views, tick):
    for index, flow in moved.items():
        c_pkts, s_pkts, c_bytes, s_bytes = flow["counters"]
        age = tick - flow["first"]
        views.append((index, age, age, c_pkts, s_pkts, c_bytes, s_bytes))
    moved.clear()


def reconcile_directions(ndpi_flows, packet_flows, slack=1.0):
    """Correct ndpiReader flows whose packets landed in the wrong direction.

    ndpiReader 4.2, reading a large capture, sometimes counts every packet of
    a long TLS flow as client-to-server (seen for 120 of 7,328 flows of one
    13-minute capture; the same flow cut out alone is counted right). Where a
    flow's packet and byte totals agree with this module's own count of the
    packets but the split between directions does not, the four counters are
    taken from the packets and ``source`` says so. Returns (flows, number
    corrected, number whose totals disagree, which are left as they are).
    """
    flows = ndpi_flows.reset_index(drop=True).copy()
    tuple_columns = ["proto", "src_ip", "src_port", "dst_ip", "dst_port"]
    counters = ["c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes"]
    left = flows[tuple_columns + ["first_seen"] + counters].reset_index(names="row")
    both = left.merge(packet_flows[tuple_columns + ["first_seen"] + counters], on=tuple_columns,
                      suffixes=("", "_packets"))
    both = both[(both["first_seen"] - both["first_seen_packets"]).abs() <= slack]
    same_packets = (both["c_to_s_pkts"] + both["s_to_c_pkts"]
                    == both["c_to_s_pkts_packets"] + both["s_to_c_pkts_packets"])
    same_bytes = (both["c_to_s_bytes"] + both["s_to_c_bytes"]
                  == both["c_to_s_bytes_packets"] + both["s_to_c_bytes_packets"])
    split_differs = both["c_to_s_pkts"] != both["c_to_s_pkts_packets"]
    fix = both[same_packets & same_bytes & split_differs]
    for name in counters:
        flows.loc[fix["row"].to_numpy(), name] = fix[name + "_packets"].to_numpy()
    flows.loc[fix["row"].to_numpy(), "source"] = "ndpiReader, directions from packets"
    disagree = int((~(same_packets & same_bytes)).sum())
    return flows, int(len(fix)), disagree
