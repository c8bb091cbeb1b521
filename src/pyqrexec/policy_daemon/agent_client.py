"""Transport to qrexec-policy-agent: policy.Ask and policy.Notify
(docs/reference/policy.md#ask-and-notify).

GUI VM dom0: the dom0 socket service (`policy.Ask` in a service directory), header
`SERVICE dom0 name dom0\\0`, then the JSON. GUI VM a qube: `qrexec-client -d GUIVM
"DEFAULT:QUBESRPC SERVICE dom0"` with the JSON on stdin.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence

from ..policy.dialogs import AskRequest, Notification, parse_ask_reply
from ..policy.tokens import ADMIN_FORMS

__all__ = ["AgentError", "AgentClient", "MAX_REPLY"]

MAX_REPLY = 65536


class AgentError(Exception):
    pass


class AgentClient:
    def __init__(self, service_path: Sequence[str], qrexec_client: str = "qrexec-client") -> None:
        self.service_path = list(service_path)
        self.qrexec_client = qrexec_client

    def _service_socket(self, service: str) -> str:
        for directory in self.service_path:
            path = os.path.join(directory, service)
            if os.path.exists(path):
                return path
        raise AgentError(f"service {service} not found in {':'.join(self.service_path)}")

    async def call(self, guivm: str, service: str, payload: bytes) -> bytes:
        """Run `service` in `guivm` with `payload` as input; its output, or `AgentError`."""
        if guivm in ADMIN_FORMS:
            path = self._service_socket(service)
            try:
                reader, writer = await asyncio.open_unix_connection(path)
                try:
                    writer.write(f"{service} dom0 name dom0\0".encode() + payload)
                    writer.write_eof()
                    return await reader.read(MAX_REPLY)
                finally:
                    writer.close()
            except OSError as err:
                raise AgentError(f"cannot reach {path}: {err}") from err
        try:
            proc = await asyncio.create_subprocess_exec(
                self.qrexec_client,
                "-d",
                guivm,
                f"DEFAULT:QUBESRPC {service} dom0",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as err:
            raise AgentError(f"cannot run {self.qrexec_client}: {err}") from err
        out, _ = await proc.communicate(payload)
        if proc.returncode != 0:
            raise AgentError(f"{service} in {guivm} failed with status {proc.returncode}")
        return out[:MAX_REPLY]

    async def ask(self, ask: AskRequest) -> str:
        if ask.guivm in ADMIN_FORMS:
            try:
                self._service_socket("policy.Ask")
            except AgentError:
                # nobody could be asked: say so, not that someone said no
                raise AgentError("no front end to ask (no policy.Ask service in dom0)") from None
        return parse_ask_reply(await self.call(ask.guivm, "policy.Ask", ask.to_json()))

    async def notify(self, note: Notification) -> None:
        await self.call(note.guivm, "policy.Notify", note.to_json())
