"""Shared fixtures: an offline tiny Qwen2 + tokenizer saved once per session, and small GAD data sets."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402

from gad_trl.testing import save_tiny_model, tiny_gad_rows  # noqa: E402

pytest_plugins = ["tests.vllm_server"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Qwen2 causal LM + chat tokenizer, loadable with from_pretrained (and by vLLM)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), seed=0)


@pytest.fixture
def tiny_dataset():
    from datasets import Dataset

    return Dataset.from_list(tiny_gad_rows(8, seed=0))
