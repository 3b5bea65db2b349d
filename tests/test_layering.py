"""The package's layering, checked by reading the source (no engine, no vLLM import).

Every `.py` under `adaras_vllm/` and `server/` is parsed with `ast`; `server/x.py` is the
module `adaras_vllm.server.x`. Every import counts, including imports inside functions and
under `if TYPE_CHECKING:`, and relative imports are resolved against the importing module.

The rooms and their one-way doors are the table in DESIGN.md ("Four rooms, one-way doors").
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "adaras_vllm"
SOURCE_DIRS = {ROOT / "adaras_vllm": "adaras_vllm", ROOT / "server": "adaras_vllm.server"}
MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    """One imported module (and, for `from X import a, b`, the names taken from it)."""

    file: Path
    line: int
    importer: str  # dotted module doing the import
    target: str  # dotted module imported (absolute)
    names: tuple[str, ...] = ()  # names taken by `from target import ...`

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


@cache
def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every project module."""
    modules: dict[str, Path] = {}
    for directory, dotted in SOURCE_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([dotted, *parts])] = path
    return modules


def is_package(module: str) -> bool:
    return project_modules()[module].name == "__init__.py"


def is_project(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def resolve_relative(importer: str, level: int, module: str | None) -> str:
    """Absolute name of `from <level dots><module> import ...` written in `importer`."""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]  # a plain module's `.` is its package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(module: str) -> Iterator[Import]:
    path = project_modules()[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(path, node.lineno, module, alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = (resolve_relative(module, node.level, node.module) if node.level
                      else node.module or "")
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in project_modules():  # `from pkg import submodule`
                    yield Import(path, node.lineno, module, submodule)
                else:
                    plain.append(alias.name)
            if plain:
                yield Import(path, node.lineno, module, target, tuple(plain))


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for module in project_modules() for imp in imports_of(module))


def room_of(module: str) -> str:
    """The folder a module lives in: `adaras_vllm.<sub>` (a subpackage or a top-level module)."""
    return ".".join(module.split(".")[:2])


def imports_in(room: str) -> Iterator[Import]:
    return (imp for imp in all_imports() if room_of(imp.importer) == room)


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def report(problems: list[str], what_to_do: str) -> str:
    return "\n".join([*problems, "", what_to_do])


# --------------------------------------------------------------------------- the folders


def test_no_import_cycles_between_folders():
    edges: dict[str, dict[str, Import]] = {}
    for imp in all_imports():
        if not is_project(imp.target):
            continue
        src, dst = room_of(imp.importer), room_of(imp.target)
        if src != dst:
            edges.setdefault(src, {}).setdefault(dst, imp)

    # Depth-first search; a back edge to a node on the current path closes a cycle.
    cycles: list[list[str]] = []
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)

    problems = []
    for cycle in cycles:
        problems.append("import cycle between folders: " + " -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            imp = edges[a][b]
            names = f" ({', '.join(imp.names)})" if imp.names else ""
            problems.append(f"  {imp.where}: {a} imports {imp.target}{names}")
    assert not cycles, report(
        problems,
        "Break the cycle: move what the lower folder needs out of the higher one (into the "
        "lower folder, or a module both may import), so the doors only open one way.",
    )


def test_maps_does_not_import_vllm_or_the_engine():
    bad = [
        f"{imp.where}: adaras_vllm.maps imports {imp.target}"
        for imp in imports_in("adaras_vllm.maps")
        if under(imp.target, "vllm") or under(imp.target, "adaras_vllm.engine")
    ]
    assert not bad, report(
        bad,
        "adaras_vllm/maps is the file format only (torch, safetensors, numpy). Move the "
        "vLLM- or engine-dependent code into adaras_vllm/engine, which may import maps.",
    )


ENGINE_MAY_IMPORT = ("adaras_vllm.engine", "adaras_vllm.maps", "adaras_vllm.package_data")


def test_the_engine_does_not_import_organism_pipeline_or_server():
    bad = [
        f"{imp.where}: adaras_vllm.engine imports {imp.target}"
        for imp in imports_in("adaras_vllm.engine")
        if is_project(imp.target) and imp.target != PACKAGE
        and not any(under(imp.target, allowed) for allowed in ENGINE_MAY_IMPORT)
    ]
    assert not bad, report(
        bad,
        "The engine may import only adaras_vllm.maps, adaras_vllm.package_data and vllm. "
        "Move the shared code down into the engine (or maps), and have the higher folder "
        "import it from there.",
    )


def test_pipeline_does_not_import_the_cli():
    bad = [
        f"{imp.where}: adaras_vllm.pipeline imports {imp.target}"
        for imp in imports_in("adaras_vllm.pipeline")
        if imp.target in ("adaras_vllm.cli", "adaras_vllm.__main__")
    ]
    assert not bad, report(
        bad,
        "The CLI sits on top of the pipeline. Move what the pipeline needs out of "
        "adaras_vllm/cli.py into the pipeline (or lower), and import it from there in both.",
    )


# --------------------------------------------------------------------------- the modules


def test_no_private_name_is_imported_across_modules():
    bad = []
    for imp in all_imports():
        if imp.target == imp.importer or imp.target not in project_modules():
            continue
        private = [n for n in imp.names
                   if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
        if private:
            bad.append(f"{imp.where}: {imp.importer} imports {', '.join(private)} "
                       f"from {imp.target}")
    assert not bad, report(
        bad,
        "A leading underscore means 'only this module uses it'. If another module needs it, "
        "give it a public name in the module that should own it and import it from there.",
    )


def test_no_source_file_is_over_500_lines():
    bad = []
    for path in sorted(project_modules().values()):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            bad.append(f"{path.relative_to(ROOT)}:{MAX_LINES + 1}: {lines} lines "
                       f"(limit {MAX_LINES})")
    assert not bad, report(
        bad,
        "Split the file by responsibility into smaller modules in the same folder.",
    )
