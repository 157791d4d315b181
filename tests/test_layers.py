"""Architecture checks: modules import only downward in DESIGN.md §6's layer order, and stay small.

DESIGN §6: cli → pipeline → train / methods / evaluate / export / reveal → step / data / bundle → kernels / models /
config, arrows only downward; rooms on one floor do not import each other (what two rooms share moves one floor down).
The table below is that order made exact for every module that exists: each DESIGN floor is split where one room
really builds on another (evaluate scores through export's runtime; reveal's self-generated data is labelled with
evaluate's predictions; a bundle holds a compiled prefix from the step), so every import either stays inside its
room or goes to a lower floor. Imports inside functions (lazy ones) count too.

Floors, top to bottom (room: module prefixes; the exact table is ``LAYERS`` below):

9. cli: spulctl.cli, spulctl.__main__, the spulctl package facade (its lazy ``load_bundle``)
8. pipeline, one function per command: spulctl.pipeline, .unlearn, .unlearn_plan, .familiarize, .evaluate.sweep
7. methods: spulctl.methods | reveal: spulctl.data.selfgen, spulctl.reveal
6. evaluate: spulctl.evaluate
5. export: spulctl.export, spulctl.bundle_peft | train: spulctl.train
4. bundle: spulctl.bundle | split: spulctl.data.split, .data.hard_negatives (spaCy NER over records)
3. step: spulctl.step, .loss, .attention, .lean_mlp, .prompt, .cuda_graphs
2. kernels: spulctl.kernels (the kernels/ folder) | models: spulctl.models | data: spulctl.data (records, tasks,
   readers) | config: spulctl.config | selection: spulctl.selection (scores and stop rules, plain numbers) |
   distributed: spulctl.distributed (ranks, broadcasts between them, FSDP sharding)
1. base: spulctl.errors, spulctl.io, spulctl.progress, and ``from spulctl import __version__``

A new module must be placed in the table (the test says so); a failing import means: move the shared piece one
floor down, or import lazily from a caller on a higher floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400

# (module prefix, floor, room); the longest matching prefix wins
LAYERS: list[tuple[str, int, str]] = [
    ("spulctl.cli", 9, "cli"), ("spulctl.__main__", 9, "cli"), ("spulctl.__init__", 9, "cli"),
    ("spulctl.pipeline", 8, "pipeline"), ("spulctl.unlearn", 8, "pipeline"), ("spulctl.unlearn_plan", 8, "pipeline"),
    ("spulctl.unlearn_data", 8, "pipeline"), ("spulctl.unlearn_ner", 8, "pipeline"),
    ("spulctl.familiarize", 8, "pipeline"), ("spulctl.evaluate.sweep", 8, "pipeline"),
    ("spulctl.methods", 7, "methods"), ("spulctl.release", 7, "methods"), ("spulctl.release.lora", 5, "export"),
    ("spulctl.data.selfgen", 7, "reveal"), ("spulctl.reveal", 7, "reveal"),
    ("spulctl.evaluate", 6, "evaluate"),
    ("spulctl.export", 5, "export"), ("spulctl.bundle_peft", 5, "export"), ("spulctl.train", 5, "train"),
    ("spulctl.bundle", 4, "bundle"), ("spulctl.data.split", 4, "split"), ("spulctl.data.ner_split", 4, "split"),
    ("spulctl.data.hard_negatives", 4, "split"),
    ("spulctl.step", 3, "step"), ("spulctl.loss", 3, "step"), ("spulctl.attention", 3, "step"),
    ("spulctl.lean_mlp", 3, "step"), ("spulctl.prompt", 3, "step"), ("spulctl.cuda_graphs", 3, "step"),
    ("spulctl.kernels", 2, "kernels"), ("spulctl.models", 2, "models"), ("spulctl.data", 2, "data"),
    ("spulctl.quantization", 2, "models"),
    ("spulctl.config", 2, "config"), ("spulctl.selection", 2, "selection"), ("spulctl.plan", 2, "models"),
    ("spulctl.distributed", 2, "distributed"),
    ("spulctl.errors", 1, "base"), ("spulctl.io", 1, "base"), ("spulctl.progress", 1, "base"),
    ("spulctl", 1, "base"),  # `from spulctl import __version__`
]


def _place(module: str) -> tuple[int, str]:
    best = max((p for p in LAYERS if module == p[0] or module.startswith(p[0] + ".")), key=lambda p: len(p[0]),
               default=None)
    if best is None:
        raise AssertionError(f"{module}: not in the layer table of tests/test_layers.py; give it a floor and a room")
    return best[1], best[2]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "spulctl").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts).removesuffix(".__init__")] = path
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        found[".".join(("spulctl", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")] = path
    return found


def _imports(module: str, path: Path) -> list[tuple[str, int]]:
    """(imported spulctl module, line) for every import in the file, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]  # what `from .` refers to
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "spulctl"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *filter(None, [base])])
            if base.split(".")[0] != "spulctl":
                continue
            for alias in node.names:  # `from spulctl.x import y` may name a submodule y
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in _MODULES else base, node.lineno))
    return out


_MODULES = _modules()


def _facade(module: str) -> str:
    return "spulctl.__init__" if module == "spulctl" else module


def test_every_import_goes_down_a_floor_or_stays_in_its_room():
    wrong = []
    for module, path in _MODULES.items():
        floor, room = _place(_facade(module))
        for target, line in _imports(module, path):
            if target == "spulctl" and module != "spulctl":
                target_floor, target_room = 1, "base"  # the package root only gives __version__ to the library
            else:
                target_floor, target_room = _place(target)
            if target_room == room or target_floor < floor:
                continue
            where = "upward" if target_floor > floor else "across the floor"
            wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} ({room}, floor {floor}) imports {target} "
                         f"({target_room}, floor {target_floor}) {where}")
    assert not wrong, "\n".join(wrong)


def test_the_package_facade_only_exports_version_to_the_library():
    for module, path in _MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "spulctl" and not node.level:
                names = {a.name for a in node.names}
                assert module == "spulctl" or names == {"__version__"}, (module, names)


@pytest.mark.parametrize("path", sorted([*(ROOT / "spulctl").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_under_400_lines(path: Path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)}: {n} lines (> {MAX_LINES}); split it by responsibility"
