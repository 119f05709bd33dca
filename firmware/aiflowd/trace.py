# Conntrack traces: the conntrack table recorded once a poll, for replay.
#
# A trace is text, one record a line, so it diffs and greps well:
#   # aiflowd conntrack trace v1        header (required first line)
#   # key=value ...                     further comments, ignored on replay
#   @ 1764876677.125                    a snapshot taken at this epoch time (s)
#   + <conntrack line>                  entry new or changed since the last snapshot
#   - <entry key>                       entry gone from the table
# Only changes are stored: an entry whose fields (the timeout aside, which
# counts down every second) are unchanged is not written again. Replaying
# rebuilds the full table at every snapshot, as a poll of the live file
# would have read it. A trace whose name ends in .gz is read through gzip.

from aiflowd import conntrack

MAGIC = "# aiflowd conntrack trace v1"


class TraceError(ValueError):
    pass


def _comparable(entry_line, entry):
    # The timeout is field 5 when present; drop it so a countdown alone is
    # no change.
    if entry.timeout is None:
        return entry_line
    fields = entry_line.split()
    del fields[4]
    return " ".join(fields)


class TraceWriter:
    """Write snapshots of a conntrack table as a trace of changes."""

    def __init__(self, stream, comment=""):
        self._stream = stream
        self._table = {}  # key -> (comparable text, line)
        stream.write(MAGIC + "\n")
        if comment:
            stream.write("# " + comment + "\n")

    def write_snapshot(self, timestamp, lines):
        """Record the table ``lines`` read at ``timestamp`` (epoch seconds).

        Returns the number of entries in the snapshot. Lines that are not
        conntrack entries raise ConntrackError.
        """
        out = self._stream
        out.write("@ %.3f\n" % timestamp)
        seen = {}
        for line in lines:
            line = line.strip()
            if not line:
                continue
            entry = conntrack.parse_line(line, need_counters=False)
            key = entry.key()
            comparable = _comparable(line, entry)
            seen[key] = True
            old = self._table.get(key)
            if old is None or old[0] != comparable:
                self._table[key] = (comparable, line)
                out.write("+ " + line + "\n")
        for key in list(self._table):
            if key not in seen:
                del self._table[key]
                out.write("- " + key + "\n")
        return len(seen)


class TraceReader:
    """Iterate over a trace as (timestamp, lines) snapshots.

    ``lines`` are the conntrack lines of the full table at that time, as a
    poll of the live file would have read them; parse them with
    conntrack.parse_lines. Only the lines are kept between snapshots, not
    parsed entries, to keep the replay's heap small.
    """

    def __init__(self, path):
        self.path = str(path)
        # The trace file's line number of each line of the last snapshot
        # yielded, in the same order, for error messages.
        self.linenos = []

    def __iter__(self):
        table = {}  # entry key -> (trace line number, conntrack line)
        timestamp = None
        lines = _read_lines(self.path)
        first = next(lines, "").rstrip("\r\n")
        if first != MAGIC:
            raise TraceError("%s line 1: not an aiflowd conntrack trace (expected %r, "
                             "found %r)" % (self.path, MAGIC, first[:60]))
        lineno = 1
        for line in lines:
            lineno += 1
            kind = line[:1]
            if kind == "#" or not line.strip():
                continue
            if kind == "@":
                if timestamp is not None:
                    yield timestamp, self._snapshot(table)
                try:
                    timestamp = float(line[1:])
                except ValueError:
                    raise TraceError("%s line %d: invalid snapshot time %r, expected "
                                     "epoch seconds" % (self.path, lineno, line[1:].strip()))
            elif timestamp is None:
                raise TraceError("%s line %d: entry before the first '@' snapshot line"
                                 % (self.path, lineno))
            elif kind == "+":
                text = line[2:].rstrip("\r\n")
                entry = conntrack.parse_line(text, self.path, lineno, need_counters=False)
                table[entry.key()] = (lineno, text)
            elif kind == "-":
                table.pop(line[2:].rstrip("\r\n"), None)
            else:
                raise TraceError("%s line %d: unknown record %r; expected '@', '+', '-' "
                                 "or '#'" % (self.path, lineno, kind))
        if timestamp is not None:
            yield timestamp, self._snapshot(table)

    def _snapshot(self, table):
        linenos = []
        lines = []
        for lineno, text in table.values():
            linenos.append(lineno)
            lines.append(text)
        self.linenos = linenos
        return lines


def _read_lines(path):
    """Yield the text lines of a trace file, decompressing a .gz file."""
    if not path.endswith(".gz"):
        with open(path) as f:
            for line in f:
                yield line
        return
    with open(path, "rb") as raw:
        try:
            import deflate  # MicroPython 1.21 and later
            stream = deflate.DeflateIO(raw, deflate.GZIP)
        except ImportError:
            import gzip
            stream = gzip.GzipFile(fileobj=raw)
        while True:
            line = stream.readline()
            if not line:
                return
            yield line.decode()

