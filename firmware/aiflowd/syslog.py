# Minimal syslog client: RFC 3164 lines over a Unix datagram socket.
#
# OpenWrt's logd, busybox syslogd, rsyslog and journald all read this form
# from /dev/log: "<PRI>Mmm dd hh:mm:ss TAG[PID]: MESSAGE".

import socket
import sys
import time

from aiflowd.log import get_logger

log = get_logger("aiflowd.syslog")

LOG_DAEMON = 3
LOG_WARNING = 4
LOG_NOTICE = 5
LOG_INFO = 6

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MICROPYTHON = sys.implementation.name == "micropython"


def _pid():
    # MicroPython's os module has no getpid(); Linux states it in /proc.
    with open("/proc/self/stat") as f:
        return int(f.read().split()[0])


def _unix_address(path):
    if _MICROPYTHON:
        # The unix port's connect() takes a raw struct sockaddr_un.
        import struct
        return struct.pack("H", socket.AF_UNIX) + path.encode() + b"\0"
    return path


class SyslogSender:
    """Send messages to a syslog socket.

    A message the socket does not take is logged to stderr instead, so it is
    not lost; with ``quiet`` (the caller prints messages itself) only the
    first failure is logged.
    """

    def __init__(self, path="/dev/log", tag="aiflowd", facility=LOG_DAEMON, quiet=False):
        self.path = path
        self.tag = tag
        self.facility = facility
        self.quiet = quiet
        self.pid = _pid()
        self.sent = 0
        self.failures = 0
        self._sock = None

    def check(self):
        """Log a warning now if the socket cannot be reached, instead of at the first flow."""
        try:
            self._connect()
        except OSError as exc:
            log.warning("syslog socket %s not reachable (%s); flagged flows go to stderr "
                        "until it is; pass --syslog PATH, or --syslog none with --stdout",
                        self.path, exc)

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.connect(_unix_address(self.path))
        except OSError:
            sock.close()
            raise
        self._sock = sock

    def format(self, severity, message, now=None):
        t = time.localtime() if now is None else time.localtime(int(now))
        return "<%d>%s %2d %02d:%02d:%02d %s[%d]: %s" % (
            self.facility * 8 + severity, _MONTHS[t[1] - 1], t[2], t[3], t[4], t[5],
            self.tag, self.pid, message)

    def send(self, severity, message):
        """Send one message; on failure log it to stderr instead and retry later.

        Returns True when the syslog socket took the message.
        """
        data = self.format(severity, message).encode()
        try:
            if self._sock is None:
                self._connect()
            self._sock.send(data)
            self.sent += 1
            return True
        except OSError as exc:
            self.close()
            self.failures += 1
            if not self.quiet:
                log.error("Unable to send to syslog socket %s: %s; message was: %s",
                          self.path, exc, message)
            elif self.failures == 1:
                log.error("Unable to send to syslog socket %s: %s; flagged flows still go "
                          "to stdout", self.path, exc)
            return False

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class NullSender:
    """Stand-in for SyslogSender when syslog is turned off (--syslog none)."""

    sent = 0
    failures = 0

    def send(self, severity, message):
        return False

    def close(self):
        pass
