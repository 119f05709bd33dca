# Diagnostic logging for the runtime.
#
# CPython (and MicroPython with micropython-lib's logging installed) gets the
# standard logging module. The bare MicroPython unix port has none, so a
# minimal logger with the same call forms writes "aiflowd: LEVEL: message"
# lines to stderr, which procd forwards to syslog.

import sys

try:
    import logging
except ImportError:
    logging = None

DEBUG = 10
INFO = 20
WARNING = 30
ERROR = 40


class _StderrLogger:
    def __init__(self, name):
        self.name = name
        self.level = WARNING

    def setLevel(self, level):
        self.level = level

    def _log(self, level, label, msg, args):
        if level < self.level:
            return
        if args:
            msg = msg % args
        sys.stderr.write("%s: %s: %s\n" % (self.name, label, msg))

    def debug(self, msg, *args):
        self._log(DEBUG, "DEBUG", msg, args)

    def info(self, msg, *args):
        self._log(INFO, "INFO", msg, args)

    def warning(self, msg, *args):
        self._log(WARNING, "WARNING", msg, args)

    def error(self, msg, *args):
        self._log(ERROR, "ERROR", msg, args)


_FALLBACK = _StderrLogger("aiflowd")


def get_logger(name):
    """Return the standard logger ``name``, or the shared stderr logger."""
    if logging is not None:
        return logging.getLogger(name)
    return _FALLBACK


def configure(level):
    """Send diagnostics at ``level`` and above to stderr."""
    if logging is not None:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(name)s: %(levelname)s: %(message)s")
        logging.getLogger("aiflowd").setLevel(level)
    else:
        _FALLBACK.setLevel(level)
