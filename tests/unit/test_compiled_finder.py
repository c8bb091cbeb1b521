"""The launchers' finder (`compiled.py`) takes a module's compiled file only when
`importlib` would take it as up to date, and gives the module what `importlib` would; anything
else it leaves to the normal finders (returns None)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import py_compile
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import pytest

from pyqrexec.compiled import PACKAGES, PycFinder, install

SRC = Path(__file__).resolve().parents[2] / "src"
TAG = sys.implementation.cache_tag


def _finder(packages: frozenset[str] = frozenset()) -> PycFinder:
    return PycFinder(TAG, importlib.util.MAGIC_NUMBER, packages)


def _module(tmp_path: Path, text: str = "VALUE = 42\n", name: str = "mod",
            **compile_kw: object) -> Path:
    source = tmp_path / f"{name}.py"
    source.write_text(text)
    py_compile.compile(str(source), doraise=True, **compile_kw)  # type: ignore[arg-type]
    return source


def _cached(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def test_up_to_date_module_loads_as_through_importlib(tmp_path: Path) -> None:
    source = _module(tmp_path)
    spec = _finder().find_spec("pyqrexec.fake.mod", [str(tmp_path)])
    assert spec is not None
    assert spec.origin == str(source)
    assert spec.cached == str(_cached(source))
    assert spec.submodule_search_locations is None
    assert isinstance(spec.loader, SourceFileLoader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.VALUE == 42
    assert module.__file__ == str(source)
    assert module.__cached__ == str(_cached(source))
    assert module.__package__ == "pyqrexec.fake"
    # the loader answers as a source loader does: tracebacks and inspect read the source
    assert spec.loader.get_source("pyqrexec.fake.mod") == "VALUE = 42\n"
    # a second load (reload) compiles the normal way
    assert spec.loader.get_code("pyqrexec.fake.mod") is not None


def test_package_is_found_with_its_search_path(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    source = _module(package, name="__init__")
    # a module file of the same name loses, as with the normal finder
    _module(tmp_path, name="pkg")
    spec = _finder(frozenset({"pyqrexec.pkg"})).find_spec("pyqrexec.pkg", [str(tmp_path)])
    assert spec is not None
    assert spec.origin == str(source)
    assert spec.submodule_search_locations == [str(package)]
    assert spec.parent == "pyqrexec.pkg"


def test_a_package_it_does_not_know_is_left_to_importlib(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    _module(tmp_path / "pkg", name="__init__")
    assert _finder().find_spec("pyqrexec.pkg", [str(tmp_path)]) is None


def test_it_knows_exactly_our_packages() -> None:
    """`PACKAGES` is what spares each module a failed stat: it must name every subpackage,
    and no module may share a name with a package (which the normal finder would take)."""
    root = SRC / "pyqrexec"
    packages = {f"pyqrexec.{d.name}" for d in root.iterdir() if (d / "__init__.py").is_file()}
    assert packages == PACKAGES
    for directory in [root, *(root / p.split(".")[1] for p in packages)]:
        modules = {f.stem for f in directory.glob("*.py")}
        assert not modules & {d.name for d in directory.iterdir() if d.is_dir()}


def test_a_changed_source_is_left_to_importlib(tmp_path: Path) -> None:
    source = _module(tmp_path)
    source.write_text("VALUE = 43\n")  # same size, newer
    st = source.stat()
    os.utime(source, (st.st_atime, st.st_mtime + 10))
    assert _finder().find_spec("pyqrexec.fake.mod", [str(tmp_path)]) is None
    _module(tmp_path)
    source.write_text("VALUE = 4242\n")  # other size, same second
    os.utime(source, (st.st_atime, st.st_mtime))
    assert _finder().find_spec("pyqrexec.fake.mod", [str(tmp_path)]) is None


@pytest.mark.parametrize("mode", [py_compile.PycInvalidationMode.CHECKED_HASH,
                                  py_compile.PycInvalidationMode.UNCHECKED_HASH])
def test_hash_based_files_are_left_to_importlib(tmp_path: Path,
                                                mode: py_compile.PycInvalidationMode) -> None:
    _module(tmp_path, invalidation_mode=mode)
    assert _finder().find_spec("pyqrexec.fake.mod", [str(tmp_path)]) is None


@pytest.mark.parametrize("damage", ["magic", "short", "body", "not code"])
def test_damaged_files_are_left_to_importlib(tmp_path: Path, damage: str) -> None:
    cached = _cached(_module(tmp_path))
    data = cached.read_bytes()
    if damage == "magic":
        data = b"\0\0\r\n" + data[4:]
    elif damage == "short":
        data = data[:12]
    elif damage == "body":
        data = data[:16] + b"\xff\xff"
    else:
        import marshal

        data = data[:16] + marshal.dumps(("a", "tuple"))
    cached.write_bytes(data)
    assert _finder().find_spec("pyqrexec.fake.mod", [str(tmp_path)]) is None


def test_other_names_and_missing_files_are_not_ours(tmp_path: Path) -> None:
    source = _module(tmp_path)
    finder = _finder()
    assert finder.find_spec("other.mod", [str(tmp_path)]) is None
    assert finder.find_spec("pyqrexec", None) is None
    assert finder.find_spec("pyqrexec.fake.mod", [str(tmp_path), "/elsewhere"]) is None
    assert finder.find_spec("pyqrexec.fake.absent", [str(tmp_path)]) is None
    _cached(source).unlink()
    assert finder.find_spec("pyqrexec.fake.mod", [str(tmp_path)]) is None


def test_install_stands_aside_for_a_pycache_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    meta_path = list(sys.meta_path)
    monkeypatch.setattr(sys, "meta_path", meta_path)
    monkeypatch.setattr(sys, "pycache_prefix", "/var/cache/py")
    install()
    assert sys.meta_path == meta_path
    monkeypatch.setattr(sys, "pycache_prefix", None)
    install()
    assert isinstance(sys.meta_path[0], PycFinder)


def test_launcher_loads_the_call_path_through_it(tmp_path: Path) -> None:
    """A compiled copy of the package, started as the launchers start: the call path's
    modules come from their compiled files."""
    subprocess.run(["cp", "-r", str(SRC / "pyqrexec"), str(tmp_path)], check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp_path / "pyqrexec")],
                   check=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from pyqrexec.compiled import install\n"
            "install()\n"
            "import pyqrexec.call.relay, pyqrexec.client.daemon_socket\n"
            "print(sorted({type(m.__loader__).__name__ for n, m in sys.modules.items()"
            " if n.startswith(('pyqrexec.call', 'pyqrexec.protocol', 'pyqrexec.client'))}))")
    r = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True,
                       text=True, check=True)
    assert r.stdout.strip() == "['_Loader']", r.stderr


@pytest.mark.parametrize("name", ["qrexec-client", "qrexec-client-vm"])
def test_launcher_imports_nothing_from_its_own_directory(tmp_path: Path, name: str) -> None:
    """A bin directory is no place to import from: a `pyqrexec` planted beside the launcher
    is not the one that runs (and the directory is not listed at the first import)."""
    launcher = tmp_path / name
    launcher.write_text(f"#!{sys.executable}\n"
                        + (SRC.parent / "scripts" / name).read_text().split("\n", 1)[1])
    launcher.chmod(0o755)
    planted = tmp_path / "pyqrexec"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise SystemExit('the planted package ran')\n")
    r = subprocess.run([str(launcher), "--version"], capture_output=True, text=True,
                       cwd="/", env={**os.environ, "PYTHONPATH": str(SRC)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{name} (pyqrexec) "), r.stdout


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`pyqrexec.fake`, a package in `tmp_path` whose modules `load` may take."""
    import types

    package = types.ModuleType("pyqrexec.fake")
    package.__path__ = [str(tmp_path)]
    monkeypatch.setitem(sys.modules, "pyqrexec.fake", package)
    monkeypatch.setattr("pyqrexec.compiled._finder", _finder())
    return tmp_path


def test_load_makes_the_module_importlib_would(fake_package: Path) -> None:
    import pyqrexec.compiled as compiled

    source = _module(fake_package, "VALUE = 42\nNAME = __name__\n")
    try:
        compiled.load(["pyqrexec.fake.mod"])
        module = sys.modules["pyqrexec.fake.mod"]
        assert module.VALUE == 42 and module.NAME == "pyqrexec.fake.mod"
        assert sys.modules["pyqrexec.fake"].mod is module  # type: ignore[attr-defined]
        assert module.__file__ == str(source)
        assert module.__cached__ == str(_cached(source))
        assert module.__package__ == "pyqrexec.fake"
        assert module.__spec__.name == "pyqrexec.fake.mod"
        assert isinstance(module.__loader__, SourceFileLoader)
        assert not hasattr(module, "__path__")
        # loaded once: a second load, or an import, takes it as it is
        compiled.load(["pyqrexec.fake.mod"])
        assert importlib.import_module("pyqrexec.fake.mod") is module
        assert importlib.reload(module) is module
    finally:
        sys.modules.pop("pyqrexec.fake.mod", None)


def test_load_leaves_nothing_of_a_module_that_fails(fake_package: Path) -> None:
    import pyqrexec.compiled as compiled

    _module(fake_package, "raise ValueError('no')\n")
    with pytest.raises(ValueError, match="no"):
        compiled.load(["pyqrexec.fake.mod"])
    assert "pyqrexec.fake.mod" not in sys.modules
    assert not hasattr(sys.modules["pyqrexec.fake"], "mod")


def test_load_imports_the_normal_way_what_it_cannot_take(fake_package: Path) -> None:
    """No compiled file (or a package not loaded, or not ours): the normal import."""
    import pyqrexec.compiled as compiled

    (fake_package / "plain.py").write_text("VALUE = 7\n")
    sys.path.insert(0, str(fake_package))
    try:
        compiled.load(["pyqrexec.fake.plain", "plain"])
        assert sys.modules["pyqrexec.fake.plain"].VALUE == 7
        assert sys.modules["plain"].VALUE == 7
    finally:
        sys.path.remove(str(fake_package))
        for name in ("pyqrexec.fake.plain", "plain"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("program", ["qrexec_client", "qrexec_client_vm"])
def test_a_clients_steps_need_no_import_of_ours_in_between(tmp_path: Path, program: str) -> None:
    """Each client names what it loads at each step in an order `load` takes whole: a module
    of ours imported through `importlib` meanwhile (listed too late, or not at all) would
    cost the generic steps `load` is there to skip."""
    subprocess.run(["cp", "-r", str(SRC / "pyqrexec"), str(tmp_path)], check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tmp_path / "pyqrexec")],
                   check=True)
    module = f"pyqrexec.cli.{program}"
    steps = ("SENDING", "LISTENING", "RELAYING") if program == "qrexec_client" else (
        "SENDING", "CALLING")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from pyqrexec import compiled\n"
            "asked = []\n"
            "find_spec = compiled.PycFinder.find_spec\n"
            "def spy(self, name, path=None, target=None):\n"
            "    if 'importlib' in sys._getframe(1).f_code.co_filename:\n"
            "        asked.append(name)\n"
            "    return find_spec(self, name, path, target)\n"
            "compiled.PycFinder.find_spec = spy\n"
            f"compiled.install({module!r})\n"
            f"m = sys.modules[{module!r}]\n"
            f"for step in {steps!r}:\n"
            "    compiled.load(getattr(m, step))\n"
            "print(' '.join(n for n in asked if n.startswith('pyqrexec')))\n"
            "print(' '.join(sorted(n for n in sys.modules if n.startswith('pyqrexec'))))")
    r = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True,
                       text=True, check=True)
    through_importlib, loaded = r.stdout.split("\n")[:2]
    assert through_importlib == ""
    assert len(loaded.split()) > 20
