"""The package's layers: lower parts never import higher ones, and the subpackages import each other
without cycles (read statically, so lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import trtllm_nemotron

PKG = Path(trtllm_nemotron.__file__).parent
# a part may import only parts listed before it (and itself)
LOWER_THAN = {
    "checkpoint": {"quant", "model", "runtime", "train", "commands", "cli"},
    "model": {"quant", "runtime", "train", "commands", "cli"},
    "quant": {"runtime", "train", "commands", "cli"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imports() -> dict[str, set[str]]:
    """part -> the parts of trtllm_nemotron its modules import."""
    out: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        src = _part(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for n in names:
                if n.startswith("trtllm_nemotron."):
                    dst = n.split(".")[1]
                    if dst != src:
                        out.setdefault(src, set()).add(dst)
    return out


def test_lower_layers_do_not_import_higher_ones():
    graph = _imports()
    bad = {part: sorted(graph.get(part, set()) & higher) for part, higher in LOWER_THAN.items()}
    assert not any(bad.values()), bad
    assert graph["model"] >= {"checkpoint"} and graph["quant"] >= {
        "model",
        "checkpoint",
    }  # the graph was read


def test_subpackages_import_each_other_without_cycles():
    graph = _imports()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join([*stack, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
