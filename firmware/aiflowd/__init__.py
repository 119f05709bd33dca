# aiflowd router runtime: flags AI-generated flows from conntrack counters.
# Runs unchanged under CPython and the MicroPython unix port.

__version__ = "0.1.0"
