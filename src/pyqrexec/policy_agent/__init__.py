"""qrexec-policy-agent: answers policy.Ask and shows policy.Notify
(docs/reference/policy.md#ask-and-notify).

For a host manager that owns a terminal::

    frontend = TerminalFrontend(sys.stdin.fileno(), sys.stdout, log)
    await AgentServer(frontend, log).serve("/var/run/qubes/policy-agent.sock")

The GTK front end lives in `pyqrexec.policy_agent.gtk` (imported only when used).
"""

from .frontends import AnswerProgram, DenyAll, Frontend
from .request import AskRequest, NotifyRequest, RequestError, parse_request
from .server import AgentServer
from .terminal import TerminalFrontend

__all__ = [
    "AgentServer",
    "AnswerProgram",
    "AskRequest",
    "DenyAll",
    "Frontend",
    "NotifyRequest",
    "RequestError",
    "TerminalFrontend",
    "parse_request",
]
