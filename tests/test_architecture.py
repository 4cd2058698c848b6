"""The package's architecture, checked: no import cycles, the layer contracts in pyproject.toml
kept (and shown to catch a violation), and the limits that the JupyterLab extension and the
OpenAPI document repeat agreeing with the request language they come from.

The layers, top to bottom: ``jupyter_hwsched.cli``; the three wings ``developer``,
``scheduler`` and ``agent``, none of which imports another; ``jupyter_hwsched.protocol``.
Imports under ``TYPE_CHECKING`` and imports inside functions count everywhere here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

from jupyter_hwsched.protocol.openapi import SPEC
from jupyter_hwsched.protocol.request import MAX_GPUS_PER_REQUEST, MAX_PRIORITY, MIN_PRIORITY

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "jupyter_hwsched"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS_CONTRACT = "Layers: the hwsched command, the three wings, the protocol"
INDEPENDENCE_CONTRACT = "The wings are independent of each other"


def _import_graph(package: str) -> dict[str, set[str]]:
    """Each module of the package and the package modules it imports directly, those under
    TYPE_CHECKING and inside functions included (grimp drops the former only when asked)."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=False, cache_dir=None)
    return {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}


def _strongly_connected(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            if successors:
                successor = successors.pop(0)
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, sorted(graph.get(successor, ()))))
                elif successor in on_stack:
                    low[node] = min(low[node], index[successor])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _cycle_through(graph: Mapping[str, Iterable[str]], module: str, members: set[str]) -> list[str]:
    """The shortest import cycle from module back to itself, within its component."""
    previous: dict[str, str] = {}
    queue = deque([module])
    while queue:
        node = queue.popleft()
        for successor in sorted(graph.get(node, ())):
            if successor not in members:
                continue
            if successor == module:
                path = [node]
                while path[-1] != module:
                    path.append(previous[path[-1]])
                return [*reversed(path), module]
            if successor not in previous:
                previous[successor] = node
                queue.append(successor)
    raise AssertionError(f"{module} is in no cycle among {sorted(members)}")


def _import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module or with a self-loop,
    as a list of modules that starts and ends with the same one."""
    cycles = []
    for component in _strongly_connected(graph):
        first = component[0]
        if len(component) > 1 or first in graph.get(first, ()):
            cycles.append(_cycle_through(graph, first, set(component)))
    return cycles


def _lint_imports(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"a"}, "b": {"a"}}, [["a", "a"]]),
        ({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}, [["a", "b", "a"], ["c", "d", "c"]]),
    ],
)
def test_cycle_finder_finds_cycles(graph: dict[str, set[str]], expected: list[list[str]]) -> None:
    """The helper behind the cycle test, on graphs whose cycles are known."""
    assert sorted(_import_cycles(graph)) == expected


def test_import_graph_counts_type_checking_and_function_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle closed only under TYPE_CHECKING, or only inside a function, is still a cycle."""
    package = tmp_path / "hwsched_cycles_probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from hwsched_cycles_probe import b\n")
    (package / "b.py").write_text(
        textwrap.dedent(
            """\
            from typing import TYPE_CHECKING

            if TYPE_CHECKING:
                from hwsched_cycles_probe import a
            """
        )
    )
    (package / "c.py").write_text("from hwsched_cycles_probe import d\n")
    (package / "d.py").write_text(
        "def f() -> None:\n    from hwsched_cycles_probe import c  # noqa: F401\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cycles = _import_cycles(_import_graph("hwsched_cycles_probe"))
    assert sorted(cycles) == [
        ["hwsched_cycles_probe.a", "hwsched_cycles_probe.b", "hwsched_cycles_probe.a"],
        ["hwsched_cycles_probe.c", "hwsched_cycles_probe.d", "hwsched_cycles_probe.c"],
    ]


def test_no_import_cycles() -> None:
    graph = _import_graph(PACKAGE)
    # the graph is the package's own, not an empty or foreign one
    assert f"{PACKAGE}.protocol.request" in graph
    assert f"{PACKAGE}.scheduler.queue" in graph
    assert sum(len(imported) for imported in graph.values()) > 50
    cycles = _import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_lint_imports_passes() -> None:
    result = _lint_imports(ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"{LAYERS_CONTRACT} KEPT" in output, output
    assert f"{INDEPENDENCE_CONTRACT} KEPT" in output, output


@pytest.mark.parametrize(
    ("module", "violation", "broken"),
    [
        pytest.param(
            "scheduler.queue",
            "agent.runner",
            [LAYERS_CONTRACT, INDEPENDENCE_CONTRACT],
            id="wing-imports-wing",
        ),
        pytest.param(
            "protocol.errors",
            "developer.settings",
            # the wings all import the protocol: through it, each now reaches developer
            [LAYERS_CONTRACT, INDEPENDENCE_CONTRACT],
            id="protocol-imports-wing",
        ),
    ],
)
def test_lint_imports_catches_violation(
    tmp_path: Path, module: str, violation: str, broken: list[str]
) -> None:
    """A copy of the package with one forbidden import breaks the contracts."""
    shutil.copytree(
        ROOT / PACKAGE,
        tmp_path / PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__", "labextension"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    parent, _, name = violation.rpartition(".")
    source = tmp_path / PACKAGE / (module.replace(".", "/") + ".py")
    text = source.read_text()
    assert f"{PACKAGE}.{violation}" not in text
    text += f"from {PACKAGE}.{parent} import {name}  # deliberate violation\n"
    source.write_text(text)
    line = len(text.splitlines())

    result = _lint_imports(tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # the copy was analysed, not the installed package: the report names the added import
    assert f"- {PACKAGE}.{module} -> {PACKAGE}.{violation} (l.{line})" in output, output
    for contract in broken:
        assert f"{contract} BROKEN" in output, output
    assert re.search(rf"Contracts: \d+ kept, {len(broken)} broken\.", output), output


def test_labextension_gpu_limit_matches_protocol() -> None:
    source = (ROOT / "labextension" / "src" / "model.ts").read_text()
    found = re.findall(r"^export const MAX_GPUS = (\d+);$", source, re.MULTILINE)
    assert len(found) == 1, "no single 'export const MAX_GPUS = <n>;' in labextension/src/model.ts"
    assert int(found[0]) == MAX_GPUS_PER_REQUEST


def test_openapi_limits_come_from_request_language() -> None:
    properties = SPEC["components"]["schemas"]["Request"]["properties"]
    assert properties["gpus"]["maximum"] == MAX_GPUS_PER_REQUEST
    assert properties["priority"]["minimum"] == MIN_PRIORITY
    assert properties["priority"]["maximum"] == MAX_PRIORITY
