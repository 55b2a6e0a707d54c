"""Who may import whom: the Python API works without the mount, the core without the API, and no
module imports itself in a circle.  The import graph is read from the source (module-level
imports only: one inside a function runs when called, not when the module is imported)."""

import ast
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fsdriver", "mountctl")
MOUNT_ONLY = {"pyfuse3", "trio"}
FSSPEC = ("fsdriver.fsspec_fs", "fsdriver.fsspec_file", "fsdriver.fsspec_listing",
          "fsdriver.fsspec_writes", "fsdriver.fsspec_moves", "fsdriver.fsspec_removal",
          "fsdriver.fsspec_attrs", "fsdriver.fsspec_errors", "fsdriver.fsspec_paths", "fsdriver.fsspec_cache")
API = ("fsdriver.data", "fsdriver.kv") + FSSPEC
# The filesystem core and its parts: given a backend, never the user-facing API or its defaults.
CORE = ("fsdriver.core", "fsdriver.records", "fsdriver.uploads", "fsdriver.staging",
        "fsdriver.handles", "fsdriver.inodes", "fsdriver.fuse_ops")
NOT_FOR_THE_CORE = {"fsdriver.data", "fsdriver.kv", "fsdriver.configured", *FSSPEC}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _top_level(body):
    """Statements run at import time: the module body and blocks in it, not function bodies."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        yield node
        for field in ("body", "orelse", "finalbody", "handlers"):
            yield from _top_level(getattr(node, field, []) or [])


def import_graph() -> dict[str, set[str]]:
    """module -> modules it imports when imported (ours by full name, others by top-level name)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _top_level(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                src = ".".join(base + ([node.module] if node.module else []))
                names = [src] + [f"{src}.{a.name}" for a in node.names]
            else:
                continue
            for target in names:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
                    prefix = ".".join(parts[:i])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        targets.add(prefix)
                if parts[0] not in PACKAGES:
                    targets.add(parts[0])
        graph[name] = targets
    return graph


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_no_import_cycles():
    graph = import_graph()
    cycles = sorted(m for m in graph if m in closure(graph, m))
    assert cycles == [], f"modules that import themselves through others: {cycles}"


def test_the_api_does_not_import_the_mount():
    graph = import_graph()
    for module in API:
        reached = closure(graph, module)
        assert not reached & (MOUNT_ONLY | set(CORE)), f"{module} imports {reached & (MOUNT_ONLY | set(CORE))}"
    assert "fsdriver.data" not in closure(graph, "fsdriver.kv")  # kv stands on the backend alone


def test_the_core_does_not_import_the_api():
    graph = import_graph()
    for module in CORE:
        reached = closure(graph, module) & NOT_FOR_THE_CORE
        assert not reached, f"{module} imports {sorted(reached)}"


_WITHOUT_THE_MOUNT = textwrap.dedent("""
    import importlib.abc, json, sys, time

    class NoMount(importlib.abc.MetaPathFinder):  # as if pyfuse3 and trio were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pyfuse3", "trio"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoMount())
    import fsdriver.data, fsdriver.kv, fsdriver.fsspec_fs

    backend = sys.argv[1]  # a URL: the API opens it (fsdriver.configured)
    store = fsdriver.data.pipeline("p1", backend=backend)
    store.puts("a/b.txt", b"hello")
    ds = fsdriver.kv.DataStore("crm", backend=backend)
    ds.set("lock", "w3", ttl=60)
    ds.incr("runs")
    fs = fsdriver.fsspec_fs.StashFileSystem(backend=backend)
    fs.pipe_file("user/alice/x.csv", b"a,b")
    print(json.dumps({
        "gets": store.gets("a/b.txt").decode(), "kv": dict(ds.items()),
        "fsspec": fs.cat_file("user/alice/x.csv").decode(),
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("pyfuse3", "trio")),
    }))
""")


def test_the_api_works_without_pyfuse3_and_trio(tmp_path):
    (tmp_path / "backend").mkdir()  # a named backend directory must exist
    out = subprocess.run([sys.executable, "-c", _WITHOUT_THE_MOUNT, str(tmp_path / "backend")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"gets": "hello", "kv": {"lock": "w3", "runs": 1},
                                      "fsspec": "a,b", "loaded": []}


def test_the_mount_is_an_extra():
    """``pip install stashfs`` is the API; ``stashfs[mount]`` adds pyfuse3 and trio, and the test
    extra (what `make deps` installs) includes it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {r.split(";")[0].split(">")[0].split("[")[0].strip() for r in requirements}

    extras = project["optional-dependencies"]
    assert not names(project["dependencies"]) & MOUNT_ONLY
    assert names(extras["mount"]) >= MOUNT_ONLY
    assert "stashfs[mount]" in extras["test"]
    assert "pip install -q -e '.[test]'" in (ROOT / "Makefile").read_text()
