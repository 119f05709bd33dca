# Parser for the /proc/net/nf_conntrack line format.
#
# Runs unchanged under CPython and the MicroPython unix port, so it uses only
# str methods and int(); no re, no dataclasses, no typing.
#
# One line, as printed by the kernel's ct_seq_show (Linux 6.x):
#   ipv4 2 tcp 6 431999 ESTABLISHED src=A dst=B sport=P dport=Q packets=N
#   bytes=M [UNREPLIED] src=B dst=C sport=Q dport=R packets=N bytes=M
#   [ASSURED] mark=0 zone=0 delta-time=12 use=2
# The timeout is left out for offloaded flows, the state word is TCP only,
# ICMP tuples carry type=/code=/id= instead of ports, and packets=/bytes=
# exist only when nf_conntrack_acct was on as the entry was created.

ACCT_SYSCTL = "net.netfilter.nf_conntrack_acct"
TIMESTAMP_SYSCTL = "net.netfilter.nf_conntrack_timestamp"

# Fields after the reply tuple that describe the whole entry.
_ENTRY_FIELDS = ("mark", "secctx", "zone", "delta-time", "use")


class ConntrackError(ValueError):
    pass


class MissingCountersError(ConntrackError):
    pass


class Entry:
    """One conntrack entry: the original-direction tuple, counters, age."""

    def __init__(self):
        self.l3 = ""
        self.proto = 0
        self.state = ""
        self.timeout = None
        # Original direction: the side that opened the flow (the client).
        self.src = ""
        self.dst = ""
        self.sport = None
        self.dport = None
        # Reply direction, as the router saw it after NAT.
        self.reply_src = ""
        self.reply_dst = ""
        self.reply_sport = None
        self.reply_dport = None
        self.orig_packets = None
        self.orig_bytes = None
        self.reply_packets = None
        self.reply_bytes = None
        self.zone = 0
        self.mark = 0
        # Seconds since the entry was created, whole seconds; present only
        # with nf_conntrack_timestamp=1.
        self.delta_time = None
        self.unreplied = False
        self.assured = False
        self.offload = False
        # Protocol fields without ports: ICMP type/code/id, GRE keys.
        self.extra = ""

    def key(self):
        """Return the flow's identity: original tuple and zone, as text."""
        return "%s %d %s %s %s %s %s z%d" % (
            self.l3, self.proto, self.src, self.dst,
            _port_text(self.sport), _port_text(self.dport), self.extra, self.zone)

    def has_counters(self):
        return self.orig_packets is not None and self.reply_packets is not None


def _port_text(port):
    return "-" if port is None else str(port)


def _where(source, lineno):
    if lineno is None:
        return source
    return "%s line %d" % (source, lineno)


def parse_line(line, source="/proc/net/nf_conntrack", lineno=None, need_counters=True):
    """Parse one conntrack line into an Entry.

    Raises ConntrackError naming the source and line when the line is not in
    the conntrack format, and MissingCountersError when it has no
    packets=/bytes= fields and need_counters is true.
    """
    tokens = line.split()
    if len(tokens) < 5:
        raise ConntrackError("%s: not a conntrack entry (too few fields): %r"
                             % (_where(source, lineno), line.strip()))
    entry = Entry()
    entry.l3 = tokens[0]
    try:
        entry.proto = int(tokens[3])
    except ValueError:
        raise ConntrackError("%s: invalid protocol number %r, expected an integer "
                             "in the 4th field: %r"
                             % (_where(source, lineno), tokens[3], line.strip()))

    side = 0  # 0 while reading the original tuple, 1 for the reply tuple
    seen_src = False
    extra = []
    for i in range(4, len(tokens)):
        token = tokens[i]
        if token[0] == "[":
            if token == "[UNREPLIED]":
                entry.unreplied = True
            elif token == "[ASSURED]":
                entry.assured = True
            elif token == "[OFFLOAD]" or token == "[HW_OFFLOAD]":
                entry.offload = True
            continue
        eq = token.find("=")
        if eq < 0:
            if i == 4 and token.isdigit():
                entry.timeout = int(token)
            elif entry.state == "":
                entry.state = token
            continue
        name = token[:eq]
        value = token[eq + 1:]
        if name == "src":
            if seen_src:
                side = 1
            seen_src = True
        try:
            if name in _ENTRY_FIELDS:
                if name == "zone":
                    entry.zone = int(value)
                elif name == "mark":
                    entry.mark = int(value)
                elif name == "delta-time":
                    entry.delta_time = int(value)
            elif side == 0:
                _set_original(entry, name, value, extra)
            else:
                _set_reply(entry, name, value)
        except ValueError:
            raise ConntrackError("%s: invalid value %r for %s=, expected an integer: %r"
                                 % (_where(source, lineno), value, name, line.strip()))

    if not entry.src or not entry.dst:
        raise ConntrackError("%s: no src=/dst= tuple in line: %r"
                             % (_where(source, lineno), line.strip()))
    entry.extra = ",".join(extra)
    if need_counters and entry.orig_packets is None:
        raise MissingCountersError(
            "%s: conntrack entry has no packets=/bytes= counters; turn on accounting "
            "with 'sysctl -w %s=1' (entries created before that keep no counters; a "
            "recorded trace must be recorded again after that): %r"
            % (_where(source, lineno), ACCT_SYSCTL, line.strip()))
    if entry.orig_packets is not None and entry.reply_packets is None:
        # A flow with no reply yet still prints reply counters of zero, so a
        # missing pair means a truncated line.
        raise ConntrackError("%s: reply tuple has no packets=/bytes= counters: %r"
                             % (_where(source, lineno), line.strip()))
    return entry


def parse_lines(lines, source, problems, linenos=None):
    """Yield an Entry for each conntrack line of ``lines``.

    Lines that cannot be used (no counters, garbled) are not yielded; their
    ConntrackError goes to the list ``problems`` instead, so one bad line
    never stops a poll. ``linenos``, when given, contains each line's line
    number in ``source`` (a trace); otherwise lines are counted from 1.
    """
    index = 0
    for line in lines:
        index += 1
        if not line.strip():
            continue
        lineno = linenos[index - 1] if linenos else index
        try:
            yield parse_line(line, source, lineno)
        except ConntrackError as exc:
            problems.append(exc)


def _set_original(entry, name, value, extra):
    if name == "src":
        entry.src = value
    elif name == "dst":
        entry.dst = value
    elif name == "sport":
        entry.sport = int(value)
    elif name == "dport":
        entry.dport = int(value)
    elif name == "packets":
        entry.orig_packets = int(value)
    elif name == "bytes":
        entry.orig_bytes = int(value)
    elif name in ("type", "code", "id", "srckey", "dstkey"):
        extra.append(name + "=" + value)


def _set_reply(entry, name, value):
    if name == "src":
        entry.reply_src = value
    elif name == "dst":
        entry.reply_dst = value
    elif name == "sport":
        entry.reply_sport = int(value)
    elif name == "dport":
        entry.reply_dport = int(value)
    elif name == "packets":
        entry.reply_packets = int(value)
    elif name == "bytes":
        entry.reply_bytes = int(value)


def proto_name(number):
    return _PROTO_NAMES.get(number, str(number))


_PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre",
                58: "icmpv6", 132: "sctp", 136: "udplite"}
