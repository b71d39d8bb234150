"""The package's shape: one subpackage per stage of the data flow, each importing only the stages before it, no
import cycles (lazy, `TYPE_CHECKING` and function-level imports count), no re-export shims, and checkpoint code
that needs nothing transformers does not."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

import vrm

SRC = Path(vrm.__file__).parent
STAGES = ("models", "data", "training", "scoring", "evaluation", "serving", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every `vrm` module a file imports, wherever the import statement stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {item for item in found if item == "vrm" or item.startswith("vrm.")}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in SRC.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for imported in imports_of(path):
            parts = imported.split(".")
            for k in range(len(parts), 0, -1):  # the longest module the name starts with
                candidate = ".".join(parts[:k])
                if candidate in files:
                    # a package importing its own submodules through __init__ is not a cycle of design
                    if candidate != name and not candidate.startswith(name + "."):
                        targets.add(candidate)
                    break
        graph[name] = targets
    return graph


def test_the_package_is_only_subpackages():
    loose = sorted(p.name for p in SRC.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == []
    assert sorted(p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(STAGES)


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target] if target in path else [node, target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_stage_imports_a_later_stage():
    upward = []
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).parts
        if len(parts) < 2:
            continue
        own = STAGES.index(parts[0])
        for imported in imports_of(path):
            stage = imported.split(".")[1] if imported.count(".") else None
            if stage in STAGES and STAGES.index(stage) > own:
                upward.append(f"{module_name(path)} -> {imported}")
    assert upward == []


def test_no_module_keeps_moved_names_alive():
    """No module-level `__getattr__` and no `noqa: F401` re-exports. Two lazy facades aside: `vrm/__init__.py`
    (`vrm --help` must not wait for torch) and `vrm/serving/__init__.py` (building `vrm serve`'s options must need
    neither torch nor the `serve` extra)."""
    shims = []
    for path in SRC.rglob("*.py"):
        if path in (SRC / "__init__.py", SRC / "serving" / "__init__.py"):
            continue
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        if any(isinstance(node, ast.FunctionDef) and node.name == "__getattr__" for node in tree.body):
            shims.append(f"{path.name}: module __getattr__")
        if "re-exported" in text or "noqa: F401" in text:
            shims.append(f"{path.name}: re-export")
    assert shims == []


def test_each_subpackage_names_its_public_surface():
    for stage in STAGES:
        package = importlib.import_module(f"vrm.{stage}")
        assert package.__doc__ and package.__all__, stage
        for name in package.__all__:
            assert hasattr(package, name), f"vrm.{stage}.{name}"
    for name in vrm.__all__:  # the lazy facade resolves every name it lists
        assert getattr(vrm, name) is not None, name


def test_checkpoint_code_imports_nothing_transformers_does_not_need():
    """The files `save_pretrained` copies beside a checkpoint (`trust_remote_code=True`) are all in `vrm.models`
    and import only torch, transformers and safetensors."""
    models = SRC / "models"
    copied = {Path(f) for f in get_relative_import_files(str(models / "modeling.py"))}
    assert all(path.parent == models for path in copied)
    assert {"config.py", "pooling.py", "heads.py"} <= {path.name for path in copied}
    for path in sorted(copied | {models / "modeling.py"}):
        third_party = set(get_imports(str(path))) - set(sys.stdlib_module_names)
        assert third_party <= {"torch", "transformers", "safetensors"}, path.name


@pytest.mark.slow
def test_the_command_line_starts_without_torch():
    """`vrm --help` (and building the parser of a scoring command) imports neither torch nor transformers."""
    code = (
        "import sys, contextlib, io\n"
        "from vrm.cli.main import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    build_parser('eval'); build_parser('score'); build_parser('train')\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
