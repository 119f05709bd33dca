"""ndpiReader CSV reading: both field separators, link headers, real ndpiReader.

tests/data/two-flows.pcap holds two flows cut from a capture of aiflowd's
own testbed (198.18.0.0/15 addresses only): a plain WebSocket telemetry
session on port 80 and an HTTPS REST session on port 8443.
"""

import shutil
import struct
from pathlib import Path

import pytest

from trainer import ndpi

DATA = Path(__file__).parent / "data"
TWO_FLOWS = DATA / "two-flows.pcap"

# Written by ndpiReader 4.2 (Debian 12) for the port-80 flow of two-flows.pcap.
NDPI_42_HEADER = (
    "#flow_id,protocol,first_seen,last_seen,duration,src_ip,src_port,dst_ip,dst_port,"
    "ndpi_proto_num,ndpi_proto,server_name_sni,c_to_s_pkts,c_to_s_bytes,"
    "c_to_s_goodput_bytes,s_to_c_pkts,s_to_c_bytes,s_to_c_goodput_bytes,data_ratio,"
    "str_data_ratio,c_to_s_goodput_ratio,s_to_c_goodput_ratio,iat_flow_min,iat_flow_avg,"
    "iat_flow_max,iat_flow_stddev,iat_c_to_s_min,iat_c_to_s_avg,iat_c_to_s_max,"
    "iat_c_to_s_stddev,iat_s_to_c_min,iat_s_to_c_avg,iat_s_to_c_max,iat_s_to_c_stddev,"
    "pktlen_c_to_s_min,pktlen_c_to_s_avg,pktlen_c_to_s_max,pktlen_c_to_s_stddev,"
    "pktlen_s_to_c_min,pktlen_s_to_c_avg,pktlen_s_to_c_max,pktlen_s_to_c_stddev,cwr,ece,"
    "urg,ack,psh,rst,syn,fin,c_to_s_cwr,c_to_s_ece,c_to_s_urg,c_to_s_ack,c_to_s_psh,"
    "c_to_s_rst,c_to_s_syn,c_to_s_fin,s_to_c_cwr,s_to_c_ece,s_to_c_urg,s_to_c_ack,"
    "s_to_c_psh,s_to_c_rst,s_to_c_syn,s_to_c_fin,c_to_s_init_win,s_to_c_init_win,"
    "server_info,tls_version,ja3c,tls_client_unsafe,ja3s,tls_server_unsafe,tls_alpn,"
    "tls_supported_versions,ssh_client_hassh,ssh_server_hassh,flow_info,plen_bins")
NDPI_42_ROW = (
    "0,6,1796415671.270,1796415778.495,107.225,198.18.0.2,60288,198.19.0.2,80,7,HTTP,"
    "198.19.0.2,44,4182,1270,45,3404,426,0.103,Mixed,30.4,12.5,40,3563.3,6994,3218.0,0,"
    "2672.0,7036,3203.3,0,2847.2,6994,3231.5,66,95.0,342,46.4,66,75.6,369,45.1,0,0,0,88,"
    "43,0,2,2,0,0,0,43,30,0,1,1,0,0,0,88,43,0,2,2,74,74,,0,,0,,0,,,,,,"
    "54;32;4;4;0;0;0;0;2;2;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;0;"
    "0;0;0;0;0;0;0")
# The same flow in the layout of nDPI 4.10 and later: '|' separators, and
# proto_by_ip inserted after ndpi_proto (nDPI 4.6 and later).
NDPI_410_HEADER = NDPI_42_HEADER.replace(",ndpi_proto,", ",ndpi_proto,proto_by_ip,").replace(",", "|")
NDPI_410_ROW = NDPI_42_ROW.replace(",HTTP,", ",HTTP,Unknown,").replace(",", "|")

# 44 packets from the client, 45 from the server, 14 bytes of Ethernet
# header each: 4182 - 14 * 44 and 3404 - 14 * 45 layer-3 bytes.
EXPECTED = {"duration": 107.225, "c_to_s_pkts": 44, "s_to_c_pkts": 45,
            "c_to_s_bytes": 3566, "s_to_c_bytes": 2774}


def write(tmp_path, header, *rows):
    path = tmp_path / "flows.csv"
    path.write_text("\n".join((header,) + rows) + "\n")
    return path


def vector(table, row=0):
    return {name: table[name].iloc[row] for name in EXPECTED}


def test_ndpi_42_comma_row(tmp_path):
    table = ndpi.read_ndpi_csv(write(tmp_path, NDPI_42_HEADER, NDPI_42_ROW), link_header=14)
    assert len(table) == 1
    assert vector(table) == pytest.approx(EXPECTED)
    assert (table["proto"].iloc[0], table["src_ip"].iloc[0], table["src_port"].iloc[0],
            table["dst_ip"].iloc[0], table["dst_port"].iloc[0]) == (
        6, "198.18.0.2", 60288, "198.19.0.2", 80)
    assert table["first_seen"].iloc[0] == pytest.approx(1796415671.270)
    assert table["label"].iloc[0] == -1


def test_ndpi_410_pipe_row(tmp_path):
    table = ndpi.read_ndpi_csv(write(tmp_path, NDPI_410_HEADER, NDPI_410_ROW), link_header=14)
    assert vector(table) == pytest.approx(EXPECTED)


def test_separator_inside_late_text_field(tmp_path):
    # Text fields are never quoted; a comma in flow_info adds a field after
    # every column the reader uses, which must not shift them.
    row = NDPI_42_ROW.replace(",,,,,,54;", ",,,,,a, b,54;")
    table = ndpi.read_ndpi_csv(write(tmp_path, NDPI_42_HEADER, row), link_header=14)
    assert vector(table) == pytest.approx(EXPECTED)


def test_link_header_zero_keeps_bytes(tmp_path):
    table = ndpi.read_ndpi_csv(write(tmp_path, NDPI_42_HEADER, NDPI_42_ROW), link_header=0)
    assert (table["c_to_s_bytes"].iloc[0], table["s_to_c_bytes"].iloc[0]) == (4182, 3404)


def test_malformed_row_names_line_and_column(tmp_path):
    bad = NDPI_42_ROW.replace(",44,4182,", ",4x4,4182,")
    path = write(tmp_path, NDPI_42_HEADER, NDPI_42_ROW, bad)
    with pytest.raises(ndpi.NdpiError, match=r"flows\.csv line 3: invalid c_to_s_pkts value '4x4'"):
        ndpi.read_ndpi_csv(path, link_header=14)


def test_truncated_row(tmp_path):
    path = write(tmp_path, NDPI_42_HEADER, ",".join(NDPI_42_ROW.split(",")[:10]))
    with pytest.raises(ndpi.NdpiError, match="line 2: 10 fields, expected 80"):
        ndpi.read_ndpi_csv(path, link_header=14)


def test_wrong_link_header_is_caught(tmp_path):
    path = write(tmp_path, NDPI_42_HEADER, NDPI_42_ROW)
    with pytest.raises(ndpi.NdpiError, match="smaller than 100 link-header bytes"):
        ndpi.read_ndpi_csv(path, link_header=100)


def test_header_checks(tmp_path):
    with pytest.raises(ndpi.NdpiError, match="not an ndpiReader CSV header"):
        ndpi.read_ndpi_csv(write(tmp_path, "flow,id", NDPI_42_ROW), link_header=14)
    with pytest.raises(ndpi.NdpiError, match="unknown field separator ';'"):
        ndpi.read_ndpi_csv(write(tmp_path, NDPI_42_HEADER.replace(",", ";")), link_header=14)
    with pytest.raises(ndpi.NdpiError, match="lacks column.* s_to_c_bytes"):
        ndpi.read_ndpi_csv(write(tmp_path, NDPI_42_HEADER.replace("s_to_c_bytes", "x")),
                           link_header=14)
    with pytest.raises(ndpi.NdpiError, match="not found"):
        ndpi.read_ndpi_csv(tmp_path / "missing.csv", link_header=14)


def _pcap_header(link_type, magic=b"\xd4\xc3\xb2\xa1"):
    return magic + struct.pack("<HHiIII", 2, 4, 0, 0, 262144, link_type)


@pytest.mark.parametrize("link_type, header_bytes", [(1, 14), (113, 16), (276, 20), (101, 0)])
def test_link_header_from_pcap(tmp_path, link_type, header_bytes):
    path = tmp_path / "x.pcap"
    path.write_bytes(_pcap_header(link_type))
    assert ndpi.link_header_bytes(path) == header_bytes


def test_link_header_rejects_unknown(tmp_path):
    path = tmp_path / "x.pcap"
    path.write_bytes(_pcap_header(147))
    with pytest.raises(ndpi.NdpiError, match="link type 147 is not supported"):
        ndpi.link_header_bytes(path)
    path.write_bytes(b"not a capture at all, really")
    with pytest.raises(ndpi.NdpiError, match="not a pcap or pcapng file"):
        ndpi.link_header_bytes(path)


def test_link_header_of_committed_capture():
    assert ndpi.pcap_link_type(TWO_FLOWS) == 1
    assert ndpi.link_header_bytes(TWO_FLOWS) == 14


def read_pcap_flows(path):
    """Independent oracle: per-flow packets, IP total lengths and first/last time."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    offset = 24
    flows = {}
    while offset < len(data):
        seconds, micros, caplen, _ = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        ip = frame[14:]
        total_length = struct.unpack_from("!H", ip, 2)[0]
        header_length = (ip[0] & 0x0F) * 4
        src = ".".join(str(b) for b in ip[12:16])
        dst = ".".join(str(b) for b in ip[16:20])
        sport, dport = struct.unpack_from("!HH", ip, header_length)
        t = seconds + micros / 1e6
        key = (src, sport, dst, dport)
        reverse = (dst, dport, src, sport)
        if reverse in flows:
            flow, side = flows[reverse], "s"
        else:
            flow, side = flows.setdefault(key, {"c_pkts": 0, "s_pkts": 0, "c_bytes": 0,
                                                "s_bytes": 0, "first": t}), "c"
        flow[side + "_pkts"] += 1
        flow[side + "_bytes"] += total_length
        flow["last"] = t
    return flows


@pytest.mark.skipif(shutil.which("ndpiReader") is None,
                    reason="ndpiReader not installed (Debian package libndpi-bin)")
def test_real_ndpireader_matches_pcap(tmp_path):
    table = ndpi.flows_from_pcap(TWO_FLOWS, tmp_path)
    oracle = read_pcap_flows(TWO_FLOWS)
    assert len(table) == len(oracle) == 2
    for row in table.itertuples():
        flow = oracle[(row.src_ip, row.src_port, row.dst_ip, row.dst_port)]
        assert (row.c_to_s_pkts, row.s_to_c_pkts) == (flow["c_pkts"], flow["s_pkts"])
        assert (row.c_to_s_bytes, row.s_to_c_bytes) == (flow["c_bytes"], flow["s_bytes"])
        # ndpiReader keeps millisecond timestamps.
        assert row.duration == pytest.approx(flow["last"] - flow["first"], abs=0.002)
    port80 = table[table["dst_port"] == 80]
    assert vector(port80) == pytest.approx(EXPECTED)


@pytest.mark.skipif(shutil.which("ndpiReader") is None,
                    reason="ndpiReader not installed (Debian package libndpi-bin)")
def test_direction_fault_is_corrected(tmp_path):
    from trainer import pcapviews
    measured = ndpi.flows_from_pcap(TWO_FLOWS, tmp_path)
    packets, _ = pcapviews.pcap_flows_and_views(TWO_FLOWS)
    # The fault seen with ndpiReader 4.2 on a large capture: every packet of
    # a flow counted from client to server.
    faulty = measured.copy()
    faulty.loc[0, "c_to_s_pkts"] += faulty.loc[0, "s_to_c_pkts"]
    faulty.loc[0, "c_to_s_bytes"] += faulty.loc[0, "s_to_c_bytes"]
    faulty.loc[0, ["s_to_c_pkts", "s_to_c_bytes"]] = 0
    # A flow whose totals differ is reported, not changed.
    faulty.loc[1, "c_to_s_bytes"] += 10

    fixed, corrected, disagree = pcapviews.reconcile_directions(faulty, packets)
    assert corrected == 1
    assert disagree == 1
    counters = ["c_to_s_pkts", "s_to_c_pkts", "c_to_s_bytes", "s_to_c_bytes"]
    assert fixed.loc[0, counters].tolist() == measured.loc[0, counters].tolist()
    assert fixed.loc[0, "source"] == "ndpiReader, directions from packets"
    assert fixed.loc[1, "c_to_s_bytes"] == measured.loc[1, "c_to_s_bytes"] + 10
    assert fixed.loc[1, "source"] == "ndpiReader"
