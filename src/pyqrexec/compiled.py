"""How the two per-call clients load the rest of the package: straight from its compiled files.

A normal import of one of our modules walks the import system's generic path: the finders on
`sys.meta_path` in turn, a directory cache per package, several `stat` calls and path
computations, all of it Python code in `importlib`. For the 25-odd modules of a call that is
about half a millisecond of every `qrexec-client` run (docs/architecture.md#code-shape). The
launchers (scripts/, and qrexec-host's: host/launchers.py) put `PycFinder` first: for a
submodule of the `pyqrexec` package already imported, it stats the one source file (which of
our names are packages it knows: `PACKAGES`, kept true by the unit tests), reads its
`__pycache__` file and, when that file is exactly what `importlib` would accept as up to date
(same magic number, timestamp-based, same source mtime and size), hands its code to a
`SourceFileLoader`. Anything else — no compiled file, a stale, hash-based or damaged one,
`sys.pycache_prefix` — is left to the normal finders, which compile as usual. Nothing else
changes: the modules get the same `__file__`, `__cached__`, loader class and spec as through
`importlib`.

Even with the finder first, each import still runs `importlib`'s generic steps in Python: a
module lock made and dropped, the finders asked in turn, the spec's attributes copied onto the
module. `load` skips those for the modules a client is about to need, named in an order where
each comes after its package and the modules it imports at its top (the clients list theirs
at each step of a call; `STARTS` has what the launchers load first). The module it makes is the
one `importlib` would make, from the same spec; a name it cannot take this way is imported
the normal way. That made `qrexec-client` calls 0.21 ms faster (paired rounds,
`bench/compare_trees.py`: quartiles 0.13-0.27 ms, faster in 38 of 40).
"""

from __future__ import annotations

import marshal
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import CodeType

try:
    # the import system's own frozen modules, loaded at every start (`importlib.machinery`
    # would load them again under other names, at a cost)
    from _frozen_importlib import ModuleSpec as _ModuleSpec
    from _frozen_importlib_external import MAGIC_NUMBER, SourceFileLoader
except ImportError:  # another implementation: the normal finders do everything
    MAGIC_NUMBER = b""  # type: ignore[misc]
    SourceFileLoader = object  # type: ignore[assignment,misc]

__all__ = ["PACKAGES", "STARTS", "PycFinder", "install", "load"]

_PREFIX = "pyqrexec."
_STAMP = 0xFFFFFFFF
#: our subpackages (tests/unit/test_compiled_finder.py checks the list against the tree).
#: Knowing them spares every module a failed `stat` of `NAME/__init__.py` and the OSError
#: raised for it. A package missing here is found by the normal finders, only slower.
PACKAGES = frozenset(f"pyqrexec.{name}" for name in (
    "agent", "api", "call", "cli", "client", "daemon", "host", "policy", "policy_agent",
    "policy_daemon", "protocol", "qubesd", "remote", "services", "system", "tools",
    "transport"))


class _Loader(SourceFileLoader):
    """A `SourceFileLoader` whose first `get_code` returns the code already read."""

    def __init__(self, fullname: str, path: str, code: CodeType) -> None:
        # what FileLoader.__init__ sets, without the call
        self.name = fullname
        self.path = path
        self._code: CodeType | None = code

    def get_code(self, fullname: str) -> CodeType | None:
        code, self._code = self._code, None
        if code is None:  # a second load (reload): the normal way
            return super().get_code(fullname)
        return code


class PycFinder:
    """Finds `pyqrexec.*` submodules by their up-to-date compiled files (see module doc)."""

    def __init__(self, tag: str, magic: bytes, packages: frozenset[str] = PACKAGES) -> None:
        self.tag = tag
        self.magic = magic
        self.packages = packages

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: object = None) -> ModuleSpec | None:
        if not fullname.startswith(_PREFIX) or path is None or len(path) != 1:
            return None
        directory = path[0]
        name = fullname.rpartition(".")[2]
        # plain concatenation: `os.path.join` is Python code, and these are our own names
        package = f"{directory}/{name}" if fullname in self.packages else ""
        source = f"{package}/__init__.py" if package else f"{directory}/{name}.py"
        try:
            st = os.stat(source)
        except OSError:
            return None
        base, stem = (package, "__init__") if package else (directory, name)
        cached = f"{base}/__pycache__/{stem}.{self.tag}.pyc"
        code = self._code(cached, st)
        if code is None:
            return None
        # what `spec_from_file_location` makes of these, without its generic steps
        spec: ModuleSpec = _ModuleSpec(fullname, _Loader(fullname, source, code),
                                       origin=source, is_package=bool(package))
        spec.has_location = True
        spec.cached = cached
        if package:
            spec.submodule_search_locations = [package]
        return spec

    def _code(self, cached: str, st: os.stat_result) -> CodeType | None:
        """The code in `cached` if it is the compiled form of a source with stat `st`."""
        try:
            # not `open()`: its buffered file object costs more than the read
            fd = os.open(cached, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, os.fstat(fd).st_size)
        except OSError:
            return None
        finally:
            os.close(fd)
        # PEP 552 header: magic, flags (0: checked by timestamp), source mtime, source size
        if (len(data) < 16 or data[:4] != self.magic or data[4:8] != b"\0\0\0\0"
                or int.from_bytes(data[8:12], "little") != int(st.st_mtime) & _STAMP
                or int.from_bytes(data[12:16], "little") != st.st_size & _STAMP):
            return None
        try:
            code = marshal.loads(memoryview(data)[16:])
        except (EOFError, ValueError, TypeError):
            return None
        return code if type(code) is _CODE else None


#: `types.CodeType`, without loading `types` (nor calling `compile`, 0.5 ms on its first use)
_CODE = type(PycFinder.find_spec.__code__)


#: the finder `install` put on `sys.meta_path`; None: `load` imports the normal way
_finder: PycFinder | None = None

#: what a launcher loads first (`install`): its program's module, after the modules that one
#: imports at its top
STARTS: dict[str, tuple[str, ...]] = {
    "pyqrexec.cli.qrexec_client": (
        "pyqrexec.cli", "pyqrexec.protocol", "pyqrexec.protocol.constants", "pyqrexec.system",
        "pyqrexec.system.defaults", "pyqrexec.cli.args", "pyqrexec.cli.qrexec_client"),
    "pyqrexec.cli.qrexec_client_vm": (
        "pyqrexec.cli", "pyqrexec.system", "pyqrexec.system.defaults", "pyqrexec.cli.args",
        "pyqrexec.cli.qrexec_client_vm"),
}


def install(program: str | None = None) -> None:
    """Put a `PycFinder` first on `sys.meta_path`, where the interpreter allows it; then
    `load` the modules `STARTS` has for `program`."""
    global _finder
    tag = sys.implementation.cache_tag
    if MAGIC_NUMBER and tag is not None and sys.pycache_prefix is None:
        _finder = PycFinder(tag, MAGIC_NUMBER)
        sys.meta_path.insert(0, _finder)
    if program is not None:
        load(STARTS[program])


def load(names: Sequence[str]) -> None:
    """Import our modules `names` in turn, each without `importlib`'s generic steps when its
    package is loaded and `PycFinder` takes its compiled file (see the module doc)."""
    new_module = type(sys)
    modules = sys.modules
    for name in names:
        if name in modules:
            continue
        parent, _, child = name.rpartition(".")
        package = modules.get(parent)
        spec = (None if _finder is None or package is None
                else _finder.find_spec(name, getattr(package, "__path__", None)))
        if spec is None:
            __import__(name)
            continue
        loader: _Loader = spec.loader  # type: ignore[assignment]
        code = loader.get_code(name)
        module = new_module(name)
        namespace = module.__dict__
        # what importlib's `_init_module_attrs` sets from such a spec
        namespace.update(__spec__=spec, __loader__=loader, __file__=spec.origin,
                         __cached__=spec.cached, __package__=parent)
        if spec.submodule_search_locations is not None:
            namespace.update(__package__=name, __path__=spec.submodule_search_locations)
        modules[name] = module
        try:
            exec(code, namespace)  # type: ignore[arg-type]  # the code the finder read
        except BaseException:
            modules.pop(name, None)
            raise
        setattr(package, child, module)
