"""The module split of issue 19: moved names keep their old import paths, and the code copied beside a
checkpoint (for `trust_remote_code=True` where vrm is not installed) needs nothing transformers does not."""

import ast
import sys
from pathlib import Path

from transformers.dynamic_module_utils import get_imports, get_relative_import_files

import vrm.modeling
import vrm.pipeline
import vrm.pooling
import vrm.scorefile

SRC = Path(vrm.modeling.__file__).parent


def test_moved_names_keep_their_old_import_paths():
    for name in ("PromptBoundaryError", "backbone_is_causal", "find_prompt_end", "first_token_index"):
        assert getattr(vrm.modeling, name) is getattr(vrm.pooling, name), name
    assert vrm.modeling.last_token_index is vrm.pooling.last_token_index
    assert vrm.pipeline.score_file is vrm.scorefile.score_file
    from vrm.modeling import PromptBoundaryError
    from vrm.pipeline import score_file

    assert issubclass(PromptBoundaryError, ValueError) and score_file is vrm.scorefile.score_file


def test_checkpoint_code_imports_nothing_transformers_does_not_need():
    copied = {Path(f).name for f in get_relative_import_files(str(SRC / "modeling.py"))}
    assert "pooling.py" in copied and "pipeline.py" not in copied and "scorefile.py" not in copied
    for name in sorted(copied | {"modeling.py"}):
        third_party = set(get_imports(str(SRC / name))) - set(sys.stdlib_module_names)
        assert third_party <= {"torch", "transformers", "safetensors"}, name  # transformers needs all three


def test_pipeline_does_not_import_scorefile_at_module_level():
    """`vrm.scorefile` builds on `vrm.pipeline`; the old path `vrm.pipeline.score_file` is resolved lazily."""
    tree = ast.parse((SRC / "pipeline.py").read_text(encoding="utf-8"))
    top_level = [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert "scorefile" not in top_level and "pipeline" in [
        node.module
        for node in ast.parse((SRC / "scorefile.py").read_text()).body
        if isinstance(node, ast.ImportFrom)
    ]
