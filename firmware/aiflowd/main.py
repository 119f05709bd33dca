# The router runtime: poll conntrack, score flows, log flagged flows.
#
# Each poll interval the runtime reads the conntrack table: the live
# /proc/net/nf_conntrack, or the next snapshot of a recorded trace. It
# updates the flow table and scores the flows whose counters moved once they
# are large enough. It flags each flow at most once and sends one syslog
# line for it.

import sys
import time

from aiflowd import conntrack, log, syslog
from aiflowd.flowtable import FLAGGED, START, FlowTable, features
from aiflowd.trace import TraceReader

logger = log.get_logger("aiflowd")

USAGE = """usage: aiflowd [OPTIONS]

Flag AI-generated flows from conntrack counters and log them to syslog.

options:
  --conntrack PATH    conntrack table to poll (default /proc/net/nf_conntrack)
  --trace PATH        replay a recorded conntrack trace instead of polling
  --interval SECONDS  time between polls of the live table (default 1)
  --syslog PATH       syslog socket for flagged flows (default /dev/log);
                      "none" sends nothing to syslog
  --stdout            also print each flagged-flow line to stdout
  --model PATH        generated scorer module, a .py or .mpy file
                      (default: aiflowd_model on the module path)
  --threshold P       flag a flow when its AI probability is above P
                      (default: the model's threshold)
  --min-packets N     score a flow once it has N packets, both directions
                      together (default 8)
  --min-duration S    score a flow once it is S seconds old (default 0)
  --max-flows N       flows tracked at once; the longest idle are dropped
                      first when full (default 4096)
  --polls N           stop after N polls; 0 runs until interrupted (default 0)
  --stats PATH        write a JSON summary to PATH on exit
  --verbose           log each poll and each scored flow
  --help              show this help
"""

# name: (kind, default, minimum)
OPTIONS = {
    "conntrack": ("path", "/proc/net/nf_conntrack", None),
    "trace": ("path", "", None),
    "interval": ("float", 1.0, 0.05),
    "syslog": ("path", "/dev/log", None),
    "stdout": ("flag", False, None),
    "model": ("path", "", None),
    "threshold": ("float", None, 0.0),
    "min-packets": ("int", 8, 0),
    "min-duration": ("float", 0.0, 0.0),
    "max-flows": ("int", 4096, 1),
    "polls": ("int", 0, 0),
    "stats": ("path", "", None),
    "verbose": ("flag", False, None),
    "help": ("flag", False, None),
}


class UsageError(ValueError):
    pass


def parse_args(argv):
    """Parse command-line options into a dict keyed by option name."""
    values = {}
    for name in OPTIONS:
        values[name] = OPTIONS[name][1]
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:] if arg.startswith("--") else ""
        value = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name not in OPTIONS:
            raise UsageError("unknown option %r; run with --help for the list" % arg)
        kind, _, minimum = OPTIONS[name]
        if kind == "flag":
            if value is not None:
                raise UsageError("option --%s takes no value, got %r" % (name, value))
            values[name] = True
            i += 1
            continue
        if value is None:
            if i + 1 >= len(argv):
                raise UsageError("option --%s needs a value" % name)
            value = argv[i + 1]
            i += 1
        i += 1
        values[name] = _convert(name, kind, minimum, value)
    if values["threshold"] is not None and values["threshold"] >= 1.0:
        raise UsageError("invalid --threshold %r; expected a probability in [0, 1)"
                         % values["threshold"])
    return values


def _convert(name, kind, minimum, text):
    if kind == "path":
        return text
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        raise UsageError("invalid --%s %r; expected %s" % (
            name, text, "an integer" if kind == "int" else "a number"))
    if minimum is not None and value < minimum:
        raise UsageError("invalid --%s %r; expected at least %s" % (name, text, minimum))
    return value


def load_model(path):
    """Import the generated scorer module, from ``path`` or the module path."""
    if path:
        try:
            open(path).close()
        except OSError as exc:
            raise UsageError("scorer module file %s not found (%s); generate it with "
                             "'make codegen' or pass --model PATH" % (path, exc))
        folder, _, filename = path.rpartition("/")
        name = filename.rsplit(".", 1)[0]
        sys.path.insert(0, folder or ".")
    else:
        name = "aiflowd_model"
    try:
        module = __import__(name)
    except ImportError as exc:
        raise UsageError("cannot import the scorer module %r (%s); generate it with "
                         "'make codegen' or pass --model PATH" % (path or name, exc))
    for attribute in ("probability", "THRESHOLD", "MODEL_ID", "FEATURES"):
        if not hasattr(module, attribute):
            raise UsageError("scorer module %r has no %s; regenerate it with 'make codegen'"
                             % (name, attribute))
    return module




def format_flag(entry, start, x, score, model_id):
    """Return the key=value syslog message for a flow with features ``x``."""
    # start (whole epoch seconds) distinguishes two connections that reused
    # one tuple, and lets a reader find the flow in a capture.
    return ("event=flagged proto=%s src=%s sport=%s dst=%s dport=%s zone=%d start=%d "
            "score=%.4f model=%s duration=%.3f c_to_s_pkts=%d s_to_c_pkts=%d "
            "c_to_s_bytes=%d s_to_c_bytes=%d" % (
                conntrack.proto_name(entry.proto), entry.src, _port(entry.sport), entry.dst,
                _port(entry.dport), entry.zone, int(start), score, model_id, x[0], x[1], x[2],
                x[3], x[4]))


def _port(port):
    return "-" if port is None else str(port)


class Runtime:
    def __init__(self, model, sender, threshold=None, min_packets=8, min_duration=0.0,
                 max_flows=4096, echo=False):
        self.model = model
        self.sender = sender
        self.threshold = model.THRESHOLD if threshold is None else threshold
        self.min_packets = min_packets
        self.min_duration = min_duration
        self.table = FlowTable(max_flows)
        self.echo = echo
        self.polls = 0
        self.scored = 0
        self.flagged = 0
        self._problem_count = 0
        self.first_problem = None  # the first unusable entry of the run

    def poll(self, now, lines, source, linenos=None):
        """Process one reading of the conntrack table, its ``lines``, taken at ``now``.

        ``linenos`` gives each line's line number in ``source`` when that is
        not its position in ``lines`` (a trace).
        """
        self.polls += 1
        problems = []
        changed = self.table.update(conntrack.parse_lines(lines, source, problems, linenos),
                                    now)
        self._report_problems(problems)
        for entry, flow in changed:
            if flow[FLAGGED] or entry.offload:
                # NOTE: offloaded flows bypass conntrack accounting unless the
                # nft flowtable has a counter, so their counters are not scored.
                continue
            x = features(flow)
            if x[1] + x[2] < self.min_packets or x[0] < self.min_duration:
                continue
            self.scored += 1
            if not self._is_ai(x):
                logger.debug("scored %s: not AI, features %r", entry.key(), x)
                continue
            flow[FLAGGED] = True
            self.flagged += 1
            message = format_flag(entry, flow[START], x, self.model.probability(x),
                                  self.model.MODEL_ID)
            self.sender.send(syslog.LOG_NOTICE, message)
            if self.echo:
                print(message)

    def _is_ai(self, x):
        # The model's own rule matches scikit-learn's predict exactly, also
        # within one ulp of a 0.5 threshold; an override compares directly.
        if self.threshold == self.model.THRESHOLD:
            return self.model.is_ai(x)
        return self.model.probability(x) > self.threshold

    def _report_problems(self, problems):
        # Report a change in the number of unusable entries, not every poll.
        count = len(problems)
        if count and self.first_problem is None:
            self.first_problem = problems[0]
        if count != self._problem_count:
            if count:
                logger.warning("skipping unusable conntrack entries: %d; first: %s", count,
                               problems[0])
            else:
                logger.info("all conntrack entries usable again")
            self._problem_count = count

    def summary(self):
        return {
            "polls": self.polls,
            "flows_seen": self.table.seen_total,
            "flows_scored": self.scored,
            "flows_flagged": self.flagged,
            "flows_evicted": self.table.evicted_total,
            "syslog_sent": self.sender.sent,
            "syslog_failures": self.sender.failures,
            "model": self.model.MODEL_ID,
            "threshold": self.threshold,
        }


def run_trace(runtime, path, max_polls=0):
    reader = TraceReader(path)
    for timestamp, lines in reader:
        runtime.poll(timestamp, lines, path, reader.linenos)
        if max_polls and runtime.polls >= max_polls:
            break
    if runtime.table.seen_total == 0 and runtime.first_problem is not None:
        # Nothing could be scored: fail, rather than report zero flows.
        raise ValueError("no usable conntrack entry in %s; first: %s"
                         % (path, runtime.first_problem))


def run_live(runtime, path, interval, max_polls=0):
    deadline = time.time()
    while True:
        now = time.time()
        try:
            with open(path) as f:
                runtime.poll(now, f, path)
        except OSError as exc:
            logger.error("Unable to read %s: %s; retrying in %s s", path, exc, interval)
        if max_polls and runtime.polls >= max_polls:
            return
        deadline += interval
        delay = deadline - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            deadline = time.time()


def write_stats(path, stats):
    import json
    with open(path, "w") as f:
        f.write(json.dumps(stats))
        f.write("\n")


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    try:
        options = parse_args(argv)
    except UsageError as exc:
        sys.stderr.write("aiflowd: %s\n" % exc)
        return 2
    if options["help"]:
        sys.stdout.write(USAGE)
        return 0
    log.configure(log.DEBUG if options["verbose"] else log.INFO)
    try:
        model = load_model(options["model"])
    except UsageError as exc:
        sys.stderr.write("aiflowd: %s\n" % exc)
        return 2
    source = options["trace"] or options["conntrack"]
    try:
        open(source).close()
    except OSError as exc:
        hint = ("record one with the host tool: 'make capture'" if options["trace"] else
                "load nf_conntrack (an nftables ruleset with NAT or 'ct state' does) and "
                "turn on accounting with 'sysctl -w %s=1'" % conntrack.ACCT_SYSCTL)
        sys.stderr.write("aiflowd: cannot open %s: %s; %s\n" % (source, exc, hint))
        return 1

    if options["syslog"] == "none":
        sender = syslog.NullSender()
    else:
        sender = syslog.SyslogSender(options["syslog"], quiet=options["stdout"])
        sender.check()
    runtime = Runtime(model, sender, options["threshold"], options["min-packets"],
                      options["min-duration"], options["max-flows"], options["stdout"])
    logger.info("starting: model %s, threshold %s, source %s, syslog %s",
                model.MODEL_ID, runtime.threshold, source, options["syslog"])
    status = 0
    try:
        if options["trace"]:
            run_trace(runtime, source, options["polls"])
        else:
            run_live(runtime, source, options["interval"], options["polls"])
    except KeyboardInterrupt:
        logger.info("interrupted")
    except ValueError as exc:
        # A malformed trace: stop with what was already flagged kept in syslog.
        logger.error("%s", exc)
        status = 1
    finally:
        sender.close()
    stats = runtime.summary()
    logger.info("stopped after %d polls: %d flows seen, %d scored, %d flagged",
                stats["polls"], stats["flows_seen"], stats["flows_scored"],
                stats["flows_flagged"])
    if options["stats"]:
        write_stats(options["stats"], stats)
    return status
