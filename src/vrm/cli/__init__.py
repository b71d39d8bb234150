"""The `vrm` command line (`vrm.cli.main`); each command is one module: `train`, `evaluate` (`vrm eval`), `score`,
`serve`, `calibrate`, `bench`, `synth`, `recipe`."""

from vrm.cli.main import main

__all__ = ["main"]
