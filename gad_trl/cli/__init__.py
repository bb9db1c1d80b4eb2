"""The `gad-trl` command line: `train`, `analyze-lengths`, `eval-discriminator`, `make-tiny`, `vllm-serve`."""

from .main import main

__all__ = ["main"]
