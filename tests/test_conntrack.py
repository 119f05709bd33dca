"""Conntrack line parsing, for every line shape the kernel prints.

Lines marked "kernel" were read from /proc/net/nf_conntrack on Linux 6.18
in a test namespace; the others are built from the kernel's ct_seq_show
format where a shape is hard to provoke in a test (zones, offload).
"""

import pytest

from aiflowd import conntrack
from aiflowd.flowtable import FlowTable, features

# kernel: TCP through the testbed router's masquerade, with timestamps on.
NAT_TCP = ("ipv4     2 tcp      6 119 TIME_WAIT src=198.18.0.2 dst=198.19.0.2 sport=45144 "
           "dport=8000 packets=6 bytes=439 src=198.19.0.2 dst=198.19.0.1 sport=8000 "
           "dport=45144 packets=6 bytes=1203 [ASSURED] mark=0 zone=0 delta-time=3 use=2")
# kernel: IPv6 addresses are printed uncompressed (%pI6).
IPV6_TCP = ("ipv6     10 tcp      6 431999 ESTABLISHED "
            "src=0000:0000:0000:0000:0000:0000:0000:0001 "
            "dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=38844 dport=8443 packets=4 "
            "bytes=346 src=0000:0000:0000:0000:0000:0000:0000:0001 "
            "dst=0000:0000:0000:0000:0000:0000:0000:0001 sport=8443 dport=38844 packets=3 "
            "bytes=524 [ASSURED] mark=0 zone=0 use=2")
# kernel: UDP has no state word; no reply yet.
UNREPLIED_UDP = ("ipv4     2 udp      17 29 src=127.0.0.1 dst=127.0.0.1 sport=40765 dport=9999 "
                 "packets=1 bytes=48 [UNREPLIED] src=127.0.0.1 dst=127.0.0.1 sport=9999 "
                 "dport=40765 packets=0 bytes=0 mark=0 zone=0 use=2")
# kernel: ICMP tuples carry type/code/id instead of ports.
ICMP = ("ipv4     2 icmp     1 29 src=127.0.0.1 dst=127.0.0.1 type=8 code=0 id=4242 packets=1 "
        "bytes=36 src=127.0.0.1 dst=127.0.0.1 type=0 code=0 id=4242 packets=1 bytes=36 "
        "mark=0 zone=0 use=2")
# built: a conntrack zone other than 0, and a TCP state word with an underscore.
ZONED = ("ipv4     2 tcp      6 60 SYN_SENT src=198.18.0.2 dst=198.19.0.2 sport=40000 "
         "dport=443 packets=1 bytes=60 [UNREPLIED] src=198.19.0.2 dst=198.18.0.2 "
         "sport=443 dport=40000 packets=0 bytes=0 mark=0 zone=7 delta-time=0 use=1")
# built: offloaded flows print no timeout.
OFFLOADED = ("ipv4     2 tcp      6 ESTABLISHED src=198.18.0.2 dst=198.19.0.2 sport=40001 "
             "dport=443 packets=20 bytes=2000 src=198.19.0.2 dst=198.19.0.1 sport=443 "
             "dport=40001 packets=30 bytes=40000 [OFFLOAD] mark=0 zone=0 use=3")
NO_COUNTERS = ("ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.0.2 dst=198.19.0.2 "
               "sport=45144 dport=80 src=198.19.0.2 dst=198.19.0.1 sport=80 dport=45144 "
               "[ASSURED] mark=0 zone=0 use=2")


def test_nat_tcp_fields():
    entry = conntrack.parse_line(NAT_TCP)
    assert (entry.l3, entry.proto, entry.state, entry.timeout) == ("ipv4", 6, "TIME_WAIT", 119)
    assert (entry.src, entry.sport, entry.dst, entry.dport) == (
        "198.18.0.2", 45144, "198.19.0.2", 8000)
    # Masquerade: the reply goes to the router's address, not the client's.
    assert (entry.reply_src, entry.reply_dst) == ("198.19.0.2", "198.19.0.1")
    assert (entry.orig_packets, entry.orig_bytes) == (6, 439)
    assert (entry.reply_packets, entry.reply_bytes) == (6, 1203)
    assert entry.assured
    assert not entry.unreplied
    assert entry.delta_time == 3
    assert entry.zone == 0


def test_nat_tcp_feature_vector():
    entry = conntrack.parse_line(NAT_TCP)
    table = FlowTable(16)
    [(seen, flow)] = table.update([entry], now=1000.0)
    assert seen is entry
    # Created 3 s (delta-time) before the poll that saw it.
    assert features(flow) == [3.0, 6, 6, 439, 1203]


def test_ipv6_uncompressed_addresses():
    entry = conntrack.parse_line(IPV6_TCP)
    assert entry.l3 == "ipv6"
    assert entry.src == "0000:0000:0000:0000:0000:0000:0000:0001"
    assert (entry.sport, entry.dport) == (38844, 8443)
    assert (entry.orig_bytes, entry.reply_bytes) == (346, 524)
    assert entry.delta_time is None


def test_unreplied_udp():
    entry = conntrack.parse_line(UNREPLIED_UDP)
    assert entry.proto == 17
    assert entry.state == ""
    assert entry.unreplied
    assert (entry.orig_packets, entry.reply_packets) == (1, 0)
    assert (entry.sport, entry.dport) == (40765, 9999)


def test_icmp_without_ports():
    entry = conntrack.parse_line(ICMP)
    assert entry.proto == 1
    assert entry.sport is None and entry.dport is None
    assert entry.extra == "type=8,code=0,id=4242"
    assert entry.key() == "ipv4 1 127.0.0.1 127.0.0.1 - - type=8,code=0,id=4242 z0"
    assert (entry.orig_bytes, entry.reply_bytes) == (36, 36)


def test_zone_in_key():
    entry = conntrack.parse_line(ZONED)
    assert entry.zone == 7
    assert entry.state == "SYN_SENT"
    assert entry.key().endswith(" z7")
    other = conntrack.parse_line(ZONED.replace("zone=7", "zone=0"))
    assert other.key() != entry.key()


def test_offloaded_without_timeout():
    entry = conntrack.parse_line(OFFLOADED)
    assert entry.timeout is None
    assert entry.state == "ESTABLISHED"
    assert entry.offload
    assert (entry.orig_packets, entry.reply_packets) == (20, 30)


def test_missing_counters_names_sysctl():
    with pytest.raises(conntrack.MissingCountersError,
                       match=r"line 4: .*sysctl -w net\.netfilter\.nf_conntrack_acct=1"):
        conntrack.parse_line(NO_COUNTERS, "/proc/net/nf_conntrack", 4)


def test_missing_counters_allowed_when_not_needed():
    entry = conntrack.parse_line(NO_COUNTERS, need_counters=False)
    assert entry.orig_packets is None
    assert not entry.has_counters()


def test_garbled_lines_name_place():
    with pytest.raises(conntrack.ConntrackError, match=r"trace\.txt line 9: not a conntrack"):
        conntrack.parse_line("hello world", "trace.txt", 9)
    with pytest.raises(conntrack.ConntrackError, match=r"invalid value 'x1' for packets="):
        conntrack.parse_line(NAT_TCP.replace("packets=6 bytes=439", "packets=x1 bytes=439"))
    with pytest.raises(conntrack.ConntrackError, match="invalid protocol number 'tcp'"):
        conntrack.parse_line("ipv4 2 tcp tcp 10 src=1.2.3.4 dst=1.2.3.5")


def test_reply_key_is_not_the_flow_key():
    # The flow is identified by its original tuple: a NAT reply tuple with
    # other addresses must not create a second flow.
    first = conntrack.parse_line(NAT_TCP)
    later = conntrack.parse_line(NAT_TCP.replace("packets=6 bytes=1203", "packets=9 bytes=2000"))
    assert first.key() == later.key()
