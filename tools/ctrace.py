"""Record the conntrack table once a poll into a trace file.

Run it inside the namespace whose table is wanted (``/proc/net`` shows the
reading process's own network namespace)::

    ip netns exec ROUTER python -m tools.ctrace --out conntrack.trace

It polls until SIGTERM or SIGINT, then takes one last snapshot and exits.
"""

import argparse
import logging
import signal
import sys
import time

from aiflowd.trace import TraceWriter

log = logging.getLogger("tools.ctrace")

CONNTRACK_PATH = "/proc/net/nf_conntrack"


_stop_requested = False


def _request_stop(signum, frame):
    # Only set a flag: a snapshot in progress is finished, not cut in half.
    global _stop_requested
    _stop_requested = True


def record(out_path, interval=1.0, table_path=CONNTRACK_PATH, max_seconds=None, comment=""):
    """Poll ``table_path`` every ``interval`` seconds into a trace at ``out_path``.

    Returns the number of snapshots written.
    """
    snapshots = 0
    started = time.time()
    with open(out_path, "w") as out:
        writer = TraceWriter(out, comment or "source=%s interval=%s" % (table_path, interval))
        deadline = time.time()
        while not _stop_requested:
            if max_seconds is not None and time.time() - started >= max_seconds:
                break
            _snapshot(writer, table_path)
            snapshots += 1
            out.flush()
            deadline += interval
            time.sleep(max(0.0, deadline - time.time()))
        _snapshot(writer, table_path)
        snapshots += 1
    log.info("wrote %d snapshots to %s", snapshots, out_path)
    return snapshots


def _snapshot(writer, table_path):
    now = time.time()
    with open(table_path) as f:
        lines = f.readlines()
    writer.write_snapshot(now, lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.ctrace", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="trace file to write")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    parser.add_argument("--table", default=CONNTRACK_PATH, help="conntrack table to read")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop after this many seconds (default: at SIGTERM)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.interval <= 0:
        parser.error("invalid --interval %r; expected seconds > 0" % args.interval)
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    record(args.out, args.interval, args.table, args.max_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
