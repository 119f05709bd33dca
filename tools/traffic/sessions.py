"""Client side of every scenario: the runner registry, filled by the WebSocket and HTTPS runner modules.

Importing this module registers every built-in runner in `RUNNERS`; see
`tools.traffic.context` for how a runner is written and registered.
"""

from tools.traffic import https_sessions, ws_sessions
from tools.traffic.context import RUNNERS, SessionContext, SessionError, Target, session_runner
from tools.traffic.pacing import Pace

__all__ = ["RUNNERS", "Pace", "SessionContext", "SessionError", "Target", "session_runner",
           "https_sessions", "ws_sessions"]
