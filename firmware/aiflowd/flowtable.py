# Flow table: conntrack entries followed across polls, reduced to features.
#
# A flow is keyed by its original-direction tuple and zone (Entry.key()).
# For each flow the table keeps one list of numbers, to stay small on a
# MicroPython heap:
#   [start, last_change, c_to_s_pkts, s_to_c_pkts, c_to_s_bytes,
#    s_to_c_bytes, flagged, generation]
# start and last_change are epoch seconds. The flow's duration is
# last_change - start: the time from its creation to the last poll that saw
# its counters move, so an idle or closed flow stops ageing, as a capture's
# first-to-last-packet duration does.

START = 0
LAST_CHANGE = 1
C_PKTS = 2
S_PKTS = 3
C_BYTES = 4
S_BYTES = 5
FLAGGED = 6
GENERATION = 7

# Seconds by which a flow's creation time, from delta-time (whole seconds)
# and poll times, may wobble before it means a new entry on the same tuple.
RESTART_SLACK = 2.0


class FlowTable:
    def __init__(self, max_flows):
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1, got %r" % (max_flows,))
        self.max_flows = max_flows
        self.flows = {}
        self.generation = 0
        self.seen_total = 0
        self.evicted_total = 0

    def update(self, entries, now):
        """Apply one poll of the conntrack table read at ``now``.

        Returns the (entry, flow) pairs that are new or whose counters moved,
        and forgets flows that left the conntrack table.
        """
        self.generation += 1
        generation = self.generation
        flows = self.flows
        changed = []
        for entry in entries:
            key = entry.key()
            flow = flows.get(key)
            if flow is None:
                if len(flows) >= self.max_flows:
                    self._evict(now)
                flow = [0.0, now, 0, 0, 0, 0, False, generation]
                self._restart(flow, entry, now)
                flows[key] = flow
                self.seen_total += 1
                changed.append((entry, flow))
                continue
            flow[GENERATION] = generation
            if (entry.orig_packets < flow[C_PKTS] or entry.reply_packets < flow[S_PKTS]
                    or (entry.delta_time is not None
                        and now - entry.delta_time > flow[START] + RESTART_SLACK)):
                # Counters only grow and an entry only ages, so this is a new
                # connection on the same tuple: conntrack replaced an entry
                # in TIME_WAIT when the client reused its port.
                self._restart(flow, entry, now)
                self.seen_total += 1
                changed.append((entry, flow))
                continue
            if (flow[C_PKTS] != entry.orig_packets or flow[S_PKTS] != entry.reply_packets
                    or flow[C_BYTES] != entry.orig_bytes or flow[S_BYTES] != entry.reply_bytes):
                flow[C_PKTS] = entry.orig_packets
                flow[S_PKTS] = entry.reply_packets
                flow[C_BYTES] = entry.orig_bytes
                flow[S_BYTES] = entry.reply_bytes
                flow[LAST_CHANGE] = now
                changed.append((entry, flow))
        gone = [key for key in flows if flows[key][GENERATION] != generation]
        for key in gone:
            del flows[key]
        return changed

    def _restart(self, flow, entry, now):
        if entry.delta_time is not None:
            flow[START] = now - entry.delta_time
        else:
            flow[START] = now
        flow[LAST_CHANGE] = now
        flow[C_PKTS] = entry.orig_packets
        flow[S_PKTS] = entry.reply_packets
        flow[C_BYTES] = entry.orig_bytes
        flow[S_BYTES] = entry.reply_bytes
        flow[FLAGGED] = False

    def _evict(self, now):
        # Drop the eighth of the table that has been idle longest, in one
        # pass, instead of scanning the table for every new flow.
        by_idle = sorted(self.flows, key=lambda key: self.flows[key][LAST_CHANGE])
        count = max(1, self.max_flows // 8)
        for key in by_idle[:count]:
            del self.flows[key]
        self.evicted_total += count


def features(flow):
    """Return the five model features of a flow, in model order."""
    return [flow[LAST_CHANGE] - flow[START], flow[C_PKTS], flow[S_PKTS],
            flow[C_BYTES], flow[S_BYTES]]
