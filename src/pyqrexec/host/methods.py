"""The qubesd methods qrexec-host serves (the `Backend` of qubesd/server.py): which method
does what to which domain, the system information the policy daemon asks for, and one log
line per request that changes something."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from ..qubesd.server import HostError
from .config import DOM0_UUID
from .domain import Domain
from .prefs import PrefError, prefs, with_pref
from .processes import BACKGROUND, STOP_TIMEOUT
from .relays import refuse_power, remote_tags

if TYPE_CHECKING:  # the manager owns its methods: only its type is needed here
    from .manager import Manager

__all__ = ["QubesdMethods", "describe_request", "QUIET_METHODS"]

#: qubesd methods that change nothing: not logged (the policy daemon asks for the system
#: info on every call, the command-line tools poll the listing)
QUIET_METHODS = ("internal.GetSystemInfo", "pyqrexec.host.List", "pyqrexec.host.Exec",
                 "pyqrexec.host.Prefs")


def describe_request(method: str, arg: str, dest: str, payload: bytes) -> str:
    """How a qubesd request reads in the log: `admin.vm.Start uuid:3333…`, with `+ARG` and
    `payload=…` when there are any."""
    text = f"{method}+{arg} {dest}" if arg else f"{method} {dest}"
    return f"{text} payload={_printable(payload)}" if payload else text


def _printable(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("ascii", errors="replace")
    return "".join(c if c.isprintable() else "?" for c in text)


class QubesdMethods:
    """The methods of both qubesd sockets, served on `manager`'s domains."""

    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    async def handle(self, method: str, arg: str, dest: str, payload: bytes,
                     internal: bool) -> bytes:
        """Serve one request; every one that is not a read-only query gets a log line."""
        log = self.manager.log
        what = describe_request(method, arg, dest, payload)
        quiet = method in QUIET_METHODS
        try:
            answer = await self._handle(method, arg, dest, payload, internal)
        except HostError as err:
            # starting what runs changes nothing: `call` and `run` do it every time
            noise = method == "admin.vm.Start" and err.exc_type == "QubesVMNotHaltedError"
            if not (quiet or noise):
                log(f"qubesd: {what} -> {err.exc_type}: {err.message}")
            raise
        except Exception as err:  # a bug or the system's refusal: still a proper answer
            log(f"qubesd: {what} -> failed: {type(err).__name__}: {err}")
            raise HostError("QubesException", f"{method} failed: {err}") from err
        if quiet:
            return answer
        log(f"qubesd: {what} -> ok" + (f" {_printable(answer)}" if answer else ""))
        return answer

    async def _handle(self, method: str, arg: str, dest: str, payload: bytes,
                      internal: bool) -> bytes:
        m = self.manager
        if internal and method == "internal.GetSystemInfo":
            return json.dumps(self.system_info()).encode()
        if not internal:
            if method == "admin.vm.Start":
                await m.start(self.resolve(dest).name)
                return b""
            if method == "admin.vm.Kill":
                await m.kill(self.resolve(dest).name)
                return b""
            if method == "admin.vm.Shutdown":
                return await self._shutdown(self.resolve(dest).name, arg, payload)
            if method == "admin.vm.CreateDisposable":
                return await m.create_disposable(self.resolve(dest), payload == b"uuid")
            if method == "pyqrexec.host.List":
                return json.dumps(self.listing()).encode()
            if method == "pyqrexec.host.Prefs":
                return json.dumps(prefs(self.resolve(dest).cfg)).encode()
            if method == "pyqrexec.host.SetPref":
                self.set_pref(self.resolve(dest), arg, payload)
                return b""
            if method == "pyqrexec.host.Exec":
                spec = m.spawner.exec_spec(self.resolve(dest), m.domains.values())
                return json.dumps(spec).encode()
            if method == "pyqrexec.host.Reload":
                return json.dumps(await m.reload()).encode()
            if method == "pyqrexec.host.Shutdown":
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.ensure_future(m.shutdown()))
                return b""
        raise HostError("QubesException", "unsupported method")

    def resolve(self, dest: str) -> Domain:
        """The domain a request names: by name, `uuid:UUID`, or dom0's keyword."""
        domains = self.manager.domains
        if dest in ("@adminvm", "dom0", f"uuid:{DOM0_UUID}"):
            return domains["dom0"]
        if dest.startswith("uuid:"):
            for d in domains.values():
                if d.cfg.uuid == dest[5:]:
                    return d
        elif dest in domains:
            return domains[dest]
        raise HostError("QubesVMNotFoundError", f"No such domain: '{dest}'")

    def system_info(self) -> dict[str, object]:
        domains: dict[str, object] = {}
        for d in self.manager.domains.values():
            c = d.cfg
            domains[c.name] = {
                "type": c.type, "tags": [*c.tags, *remote_tags(c)], "uuid": c.uuid,
                "default_dispvm": c.default_dispvm,
                "template_for_dispvms": c.template_for_dispvms,
                "power_state": "Running" if d.state == "Running" else d.state,
                "label": c.colour, "icon": c.icon, "guivm": c.guivm,
                "relayvm": c.relayvm, "transport_rpc": c.transport_rpc,
                "internal": True if c.internal else None,
            }
        return {"domains": domains}

    def listing(self) -> list[dict[str, object]]:
        return [{"name": d.name, "type": d.cfg.type, "state": d.state, "domid": d.domid,
                 "label": d.cfg.label, "uuid": d.cfg.uuid, "tags": list(d.cfg.tags),
                 "default_dispvm": d.cfg.default_dispvm,
                 "template_for_dispvms": d.cfg.template_for_dispvms,
                 "autostart": d.cfg.autostart, "disposable": d.disposable}
                for d in self.manager.domains.values()]

    def set_pref(self, d: Domain, key: str, payload: bytes) -> None:
        """`pyqrexec.host.SetPref+KEY`, payload the value: the policy sees it from its next
        request on (it asks for the system info every time); a running domain's daemon
        keeps the default_user it was started with until the domain restarts."""
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise HostError("QubesPropertyValueError", "value is not UTF-8") from None
        domains = {n: o.cfg for n, o in self.manager.domains.items()}
        try:
            d.cfg = with_pref(domains, d.name, key, text)
        except PrefError as err:
            raise HostError(err.kind, str(err)) from None

    async def _shutdown(self, name: str, arg: str, payload: bytes) -> bytes:
        """`admin.vm.Shutdown[+wait]`, payload the seconds to wait before killing."""
        try:
            timeout = float(payload.decode("ascii")) if payload else STOP_TIMEOUT
        except (UnicodeDecodeError, ValueError):
            raise HostError("QubesException", "invalid timeout") from None
        if not 0 <= timeout <= 3600:
            raise HostError("QubesException", "timeout must be 0 to 3600 seconds")
        d = self.manager.domains.get(name)
        if d is not None:
            refuse_power(d.cfg, "shut down")
        if d is None or not d.running:
            raise HostError("QubesVMNotStartedError", f"Domain is powered off: {name}")
        if arg == "wait":
            await self.manager.shutdown_domain(name, timeout)
        else:  # like qvm-shutdown without --wait: started, not finished
            BACKGROUND.start(self.manager.shutdown_domain(name, timeout))
        return b""
