"""A syslog socket for demos and tests: receives what aiflowd sends to /dev/log.

It binds a Unix datagram socket at a path of the caller's choosing, the
same kind of socket OpenWrt's logd and other syslog daemons read, and keeps
every message it receives.
"""

import logging
import os
import re
import socket
import threading

log = logging.getLogger(__name__)

# RFC 3164: <PRI>Mmm dd hh:mm:ss TAG[PID]: MESSAGE
_LINE = re.compile(r"<(?P<pri>\d{1,3})>(?P<time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) "
                   r"(?P<tag>[^\[:\s]+)(?:\[(?P<pid>\d+)\])?: (?P<message>.*)", re.S)


def parse_line(data):
    """Parse one RFC 3164 syslog datagram into a dict; raise ValueError if it is not one."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    match = _LINE.fullmatch(text.rstrip("\n"))
    if match is None:
        raise ValueError("not an RFC 3164 syslog line: %r" % text[:120])
    fields = match.groupdict()
    pri = int(fields["pri"])
    return {"facility": pri // 8, "severity": pri % 8, "time": fields["time"],
            "tag": fields["tag"], "pid": int(fields["pid"]) if fields["pid"] else None,
            "message": fields["message"], "line": text.rstrip("\n")}


def parse_fields(message):
    """Split a key=value message into a dict of strings."""
    return dict(item.split("=", 1) for item in message.split() if "=" in item)


class SyslogReceiver:
    """Collect syslog datagrams sent to ``path`` until closed.

    ``on_record``, when given, is called with each parsed record as it
    arrives, from the receiver thread.
    """

    def __init__(self, path, on_record=None):
        self.path = str(path)
        self.on_record = on_record
        self.records = []
        self.invalid = []
        self._lock = threading.Lock()
        self._sock = None
        self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        # Other namespaces' processes (the router's runtime) may run with
        # another uid in some set-ups; let anyone on this host write.
        os.chmod(self.path, 0o666)
        self._sock.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._receive, name="syslog-receiver",
                                        daemon=True)
        self._thread.start()
        log.debug("syslog receiver listening on %s", self.path)

    def _receive(self):
        while self._running:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                record = parse_line(data)
            except ValueError:
                with self._lock:
                    self.invalid.append(data)
                continue
            with self._lock:
                self.records.append(record)
            if self.on_record is not None:
                self.on_record(record)

    def messages(self, tag=None):
        with self._lock:
            return [r for r in self.records if tag is None or r["tag"] == tag]

    def close(self):
        if self._sock is None:
            return
        self._running = False
        self._thread.join(timeout=2)
        self._sock.close()
        self._sock = None
        if os.path.exists(self.path):
            os.unlink(self.path)
