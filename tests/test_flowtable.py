"""Flow table bookkeeping and the trace format, on hand-made snapshots."""

import io

from aiflowd import conntrack
from aiflowd.flowtable import FlowTable, features
from aiflowd.trace import MAGIC, TraceReader, TraceWriter

LINE = ("ipv4     2 tcp      6 {timeout} ESTABLISHED src=198.18.0.2 dst=198.19.0.2 "
        "sport={sport} dport=80 packets={cp} bytes={cb} src=198.19.0.2 dst=198.19.0.1 "
        "sport=80 dport={sport} packets={sp} bytes={sb} [ASSURED] mark=0 zone=0{delta} use=2")


def line(sport=40000, cp=5, cb=400, sp=4, sb=900, timeout=431999, delta=None):
    delta_text = "" if delta is None else " delta-time=%d" % delta
    return LINE.format(sport=sport, cp=cp, cb=cb, sp=sp, sb=sb, timeout=timeout,
                       delta=delta_text)


def entry(**kwargs):
    return conntrack.parse_line(line(**kwargs))


def test_duration_without_delta_time_counts_from_first_poll():
    table = FlowTable(8)
    table.update([entry()], now=100.0)
    changed = table.update([entry(cp=9, cb=800)], now=103.0)
    assert len(changed) == 1
    assert features(changed[0][1]) == [3.0, 9, 4, 800, 900]


def test_idle_flow_stops_ageing():
    table = FlowTable(8)
    table.update([entry(delta=2)], now=100.0)
    table.update([entry(cp=7, delta=4)], now=102.0)
    # Counters unchanged for 10 s: not reported as changed, duration kept.
    changed = table.update([entry(cp=7, delta=14)], now=112.0)
    assert changed == []
    flow = table.flows[entry().key()]
    assert features(flow)[0] == 4.0  # created at 98, last change at 102


def test_flows_leaving_the_table_are_forgotten():
    table = FlowTable(8)
    table.update([entry(sport=1), entry(sport=2)], now=1.0)
    table.update([entry(sport=2)], now=2.0)
    assert list(table.flows) == [entry(sport=2).key()]
    assert table.seen_total == 2


def test_full_table_evicts_longest_idle():
    table = FlowTable(8)
    table.update([entry(sport=p) for p in range(8)], now=1.0)
    # Flows 4..7 move at t=2; 0..3 stay idle.
    table.update([entry(sport=p, cp=5 + (p >= 4)) for p in range(8)], now=2.0)
    table.update([entry(sport=p, cp=5 + (p >= 4)) for p in range(9)], now=3.0)
    assert len(table.flows) <= 8
    assert entry(sport=8).key() in table.flows
    assert entry(sport=0).key() not in table.flows  # idle since t=1: evicted first
    assert table.evicted_total == 1


def test_trace_round_trip_rebuilds_every_snapshot(tmp_path):
    snapshots = [
        (10.0, [line(sport=1, timeout=100), line(sport=2, timeout=100)]),
        # Only the timeout of flow 1 moves: no record for it. Flow 2 moves.
        (11.0, [line(sport=1, timeout=99), line(sport=2, cp=8, timeout=99)]),
        # Flow 1 leaves the table.
        (12.0, [line(sport=2, cp=8, timeout=98)]),
    ]
    out = io.StringIO()
    writer = TraceWriter(out, "test")
    for timestamp, lines in snapshots:
        writer.write_snapshot(timestamp, lines)
    text = out.getvalue()
    assert text.startswith(MAGIC + "\n# test\n")
    assert text.count("\n+ ") == 3
    assert text.count("\n- ") == 1

    path = tmp_path / "t.trace"
    path.write_text(text)
    replayed = [(t, sorted((e.sport, e.orig_packets)
                           for e in conntrack.parse_lines(lines, "t.trace", [])))
                for t, lines in TraceReader(str(path))]
    assert replayed == [(10.0, [(1, 5), (2, 5)]), (11.0, [(1, 5), (2, 8)]), (12.0, [(2, 8)])]



def test_reused_tuple_starts_a_new_flow():
    table = FlowTable(8)
    table.update([entry(cp=40, sp=38, delta=30)], now=100.0)
    table.update([entry(cp=41, sp=40, delta=31)], now=101.0)
    table.flows[entry().key()][6] = True  # flagged
    # The client reused the port: conntrack shows a young entry with small counters.
    [(seen, flow)] = table.update([entry(cp=3, sp=2, delta=0)], now=102.0)
    assert features(flow) == [0.0, 3, 2, 400, 900]
    assert flow[6] is False
    assert table.seen_total == 2


def test_reused_tuple_detected_by_age_alone():
    table = FlowTable(8)
    table.update([entry(cp=4, sp=4, delta=1)], now=100.0)
    # More packets than before, but the entry is 5 s younger than the flow.
    [(seen, flow)] = table.update([entry(cp=9, sp=9, delta=0)], now=105.0)
    assert features(flow)[0] == 0.0
    assert table.seen_total == 2
