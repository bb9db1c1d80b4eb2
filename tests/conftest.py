"""Shared fixtures: an offline tiny Qwen2 + tokenizer saved once per session, and small GAD data sets."""

from gad_trl.testing import save_tiny_model, tiny_gad_rows, use_offline_env

use_offline_env()  # before pytest plugins and tests import transformers / huggingface_hub

import pytest  # noqa: E402

pytest_plugins = ["tests.vllm_server"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Qwen2 causal LM + chat tokenizer, loadable with from_pretrained (and by vLLM)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), seed=0)


@pytest.fixture
def tiny_dataset():
    from datasets import Dataset

    return Dataset.from_list(tiny_gad_rows(8, seed=0))
