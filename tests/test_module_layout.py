"""The module split of issue 19: moved names keep their old import paths, and the code copied beside a
checkpoint (for `trust_remote_code=True` where vrm is not installed) needs nothing transformers does not."""

import ast
import sys
from pathlib import Path

import pytest
import vrm.models.modeling
import vrm.scoring.pipeline
import vrm.models.pooling
import vrm.scoring.score_file
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

SRC = Path(vrm.models.modeling.__file__).parent


def test_moved_names_keep_their_old_import_paths():
    for name in ("PromptBoundaryError", "backbone_is_causal", "find_prompt_end", "first_token_index"):
        assert getattr(vrm.models.modeling, name) is getattr(vrm.models.pooling, name), name
    assert vrm.models.modeling.last_token_index is vrm.models.pooling.last_token_index
    assert vrm.scoring.score_file is vrm.scoring.score_file.score_file
    from vrm.models.pooling import PromptBoundaryError
    from vrm.scoring.score_file import score_file

    assert issubclass(PromptBoundaryError, ValueError) and score_file is vrm.scoring.score_file.score_file


def test_checkpoint_code_imports_nothing_transformers_does_not_need():
    copied = {Path(f).name for f in get_relative_import_files(str(SRC / "modeling.py"))}
    assert "pooling.py" in copied and "pipeline.py" not in copied and "scorefile.py" not in copied
    assert "config.py" in copied and "arguments.py" not in copied and "trl_args.py" not in copied
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


def test_split_modules_keep_the_old_import_paths():
    """Issue 19's second split: the argument dataclasses, `vrm train`'s parser and the `vrm train` job moved."""
    import vrm.arguments
    import vrm.cli_args
    import vrm.models.config
    import vrm.train_job
    import vrm.training.trainer

    import vrm
    import vrm.cli.train
    from vrm.training.arguments import DataArguments, ModelArguments, VRMTrainingArguments
    from vrm.training.trainer import TrainingResult, check_rating_arguments, run_training

    assert ModelArguments is vrm.arguments.ModelArguments is vrm.ModelArguments
    assert (
        DataArguments is vrm.arguments.DataArguments
        and VRMTrainingArguments is vrm.arguments.VRMTrainingArguments
    )
    assert run_training is vrm.train_job.run_training and TrainingResult is vrm.train_job.TrainingResult
    assert check_rating_arguments is vrm.train_job.check_rating_arguments
    for name in ("parse_train_args", "build_train_parser", "check_choices", "pop_option"):
        assert getattr(vrm.cli.train, name) is getattr(vrm.cli_args, name), name
    for module in (vrm.models.config, vrm.training.trainer):  # the lazy re-exports still refuse unknown names
        with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
            module.no_such_name  # noqa: B018


def test_lower_modules_do_not_import_the_split_off_ones_at_module_level():
    """`vrm.arguments` builds on `vrm.config`, `vrm.train_job` on `vrm.trainer`: the old modules re-export them
    on first use, never by an import statement at module level (nothing imports upwards)."""

    def top_level_imports(name: str) -> set[str]:
        tree = ast.parse((SRC / name).read_text(encoding="utf-8"))
        return {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.module}

    assert "arguments" not in top_level_imports("config.py") and "config" in top_level_imports("arguments.py")
    assert "train_job" not in top_level_imports("trainer.py") and "trainer" in top_level_imports(
        "train_job.py"
    )
    assert "trainer" not in top_level_imports("cli_args.py") and "cli_args" in top_level_imports("cli.py")
