"""LoRA / QLoRA discriminators, and the shared-base discriminator (a second adapter on the student's frozen base).

Three ways to make the discriminator small (GADConfig fields, TRL `ModelConfig` naming with a `discriminator_` prefix):

- `discriminator_use_peft`: LoRA on the discriminator's backbone; the value head `score` is trained in full (PEFT's
  `modules_to_save`, task type `SEQ_CLS`), as a LoRA reward model is trained in TRL.
- `discriminator_load_in_4bit` (with `discriminator_use_peft`): QLoRA, the frozen backbone in 4-bit (bitsandbytes,
  nf4 by default), loaded the way TRL's `get_quantization_config` loads a 4-bit student.
- `discriminator_shared_base` (with a LoRA student): no second backbone at all. The discriminator is a second LoRA
  adapter (`DISCRIMINATOR_ADAPTER`) on the student's own frozen base plus its own value head; one copy of the base
  serves the student (adapter `default`), the reference (adapters off, TRL's `disable_adapter`) and the
  discriminator. The student's adapter is the active one everywhere except inside `discriminator_scope`.

Every PEFT discriminator is saved in one format: `discriminator/` holds a PEFT `SEQ_CLS` adapter (LoRA weights + the
head) that reloads with `PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base,
num_labels=1), path)`; `export_merged_discriminator` writes a plain `AutoModelForSequenceClassification` folder (a
QLoRA adapter is merged into the dequantized 4-bit base it was trained on). For a decoder without a
sequence-classification class, read `GADValueHeadModel` (`gad_trl.discriminator.value_head`) for
`AutoModelForSequenceClassification` throughout: same keys, same head, same PEFT task type.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers.utils import logging

from .pooling import POOLING_CONFIG_KEY, discriminator_pooling, set_discriminator_pooling
from .value_head import load_value_model

logger = logging.get_logger(__name__)

DISCRIMINATOR_ADAPTER = "discriminator"  # PEFT writes a non-default adapter to <dir>/<name>/, i.e. discriminator/
ADAPTER_CONFIG_NAME = "adapter_config.json"
HEAD_MODULE = "score"
HEAD_KEY = f"base_model.model.{HEAD_MODULE}.weight"  # PEFT's key for the head (`modules_to_save`) in an adapter file
MERGED_DIR = "discriminator_merged"
# The discriminator-config keys an adapter folder must carry (scoring depends on them), written next to the adapter:
# a config.json there would make transformers take the folder for a full model and look for its weights.
SETTINGS_NAME = "gad_discriminator.json"


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------


def require_bitsandbytes(flag: str) -> None:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"{flag} loads a 4-bit (QLoRA) base through bitsandbytes, which is not installed. Install it with "
            "`pip install 'gad_trl[quantization]'` (or `pip install bitsandbytes`), or drop the 4-bit option."
        )


def require_peft(flag: str) -> None:
    if importlib.util.find_spec("peft") is None:
        raise ImportError(f"{flag} needs the `peft` library: `pip install 'gad_trl[peft]'` (or `pip install peft`).")


def wants_peft_discriminator(args) -> bool:
    return bool(getattr(args, "discriminator_use_peft", False) or getattr(args, "discriminator_shared_base", False))


def check_peft_fields(args) -> None:
    """Field combinations that cannot work, checked when the config is built (GADConfig.__post_init__)."""
    if args.discriminator_load_in_4bit and not wants_peft_discriminator(args):
        raise ValueError(
            "discriminator_load_in_4bit needs LoRA: 4-bit weights cannot be trained. Set discriminator_use_peft: true "
            "(QLoRA), or drop discriminator_load_in_4bit."
        )
    if args.discriminator_shared_base and args.discriminator_load_in_4bit:
        raise ValueError(
            "discriminator_shared_base uses the student's base, so discriminator_load_in_4bit does not apply: "
            "quantize the shared base with the student's `load_in_4bit` instead."
        )
    if args.discriminator_shared_base and args.discriminator_model_name_or_path:
        raise ValueError(
            "discriminator_shared_base puts the discriminator on the student's base; it cannot also load "
            f"discriminator_model_name_or_path={args.discriminator_model_name_or_path!r}. Drop one of the two."
        )
    if wants_peft_discriminator(args):
        require_peft("discriminator_use_peft" if args.discriminator_use_peft else "discriminator_shared_base")
    if args.discriminator_load_in_4bit:
        require_bitsandbytes("discriminator_load_in_4bit")


def discriminator_peft_config(args):
    """The discriminator's `LoraConfig` (task `SEQ_CLS`, the head `score` trained in full), or None without PEFT."""
    if not wants_peft_discriminator(args):
        return None
    from peft import LoraConfig

    return LoraConfig(
        task_type="SEQ_CLS",
        r=args.discriminator_lora_r,
        lora_alpha=args.discriminator_lora_alpha,
        lora_dropout=args.discriminator_lora_dropout,
        target_modules=args.discriminator_lora_target_modules,
        modules_to_save=[HEAD_MODULE],
        bias="none",
    )


def discriminator_quantization_config(args, dtype):
    """A `BitsAndBytesConfig` for a 4-bit discriminator base (as TRL's `get_quantization_config`), or None."""
    if not args.discriminator_load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=dtype,  # as TRL: compute in the dtype the rest of the model is loaded in
        bnb_4bit_quant_type=args.discriminator_bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=args.discriminator_use_bnb_nested_quant,
    )


def quantized_init_kwargs(init_kwargs: dict, args) -> dict:
    """`init_kwargs` for loading the discriminator, with its 4-bit config and a device map on this process's device.

    Only the discriminator's own `discriminator_load_in_4bit` quantizes it: a quantization_config arriving through the
    init kwargs (e.g. a student's, inherited from `model_init_kwargs`) is an error, not silently applied or dropped.
    """
    init_kwargs = dict(init_kwargs or {})
    if init_kwargs.get("quantization_config") is not None:
        raise ValueError(
            "The discriminator's init kwargs hold a quantization_config (inherited from model_init_kwargs when "
            "discriminator_init_kwargs is unset); a full discriminator cannot train in 4-bit. Quantize it with "
            "discriminator_use_peft + discriminator_load_in_4bit, and pass the student's quantization through the "
            "trainer's quantization_config (or set discriminator_init_kwargs without one)."
        )
    dtype = init_kwargs.get("dtype", torch.float32)
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    quantization_config = discriminator_quantization_config(args, dtype if isinstance(dtype, torch.dtype) else None)
    if quantization_config is not None:
        init_kwargs["quantization_config"] = quantization_config
        init_kwargs["device_map"] = {"": str(args.device)}  # bitsandbytes quantizes where the weights are placed
    return init_kwargs


# --------------------------------------------------------------------------------------------------------------------
# Separate LoRA / QLoRA discriminator
# --------------------------------------------------------------------------------------------------------------------


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def keep_4bit_layout_for_training(model) -> None:
    """bitsandbytes (0.50) repacks a CPU 4-bit weight for its bf16 inference kernel at the first eval-mode forward
    and keeps that layout, and the inference kernel has no backward: training after an evaluation then fails (or
    loses the gradient through the base). Keep the training layout on CPU; GPUs are unaffected."""
    if importlib.util.find_spec("bitsandbytes") is None:
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def lora_config_for(model, lora_config):
    """A copy of `lora_config` with the targets resolved for `model`: `target_modules=None` means PEFT's default for
    the architecture, and where PEFT has none (GPT-OSS, Qwen3-MoE, ...) every linear layer (`all-linear`)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    config = copy.deepcopy(lora_config)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if config.target_modules is None and not getattr(config, "target_parameters", None) and (
            model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING):
        config.target_modules = "all-linear"
    return config


@contextmanager
def explained_lora_errors():
    """PEFT's error for LoRA on fused MoE expert parameters (its `ParamWrapper`: `target_parameters`, or what
    `all-linear` maps to on fused experts) with dropout, named with the discriminator's fields."""
    try:
        yield
    except ValueError as err:
        if "does not work with lora_dropout" not in str(err):
            raise
        raise ValueError(
            "The discriminator's LoRA reaches fused MoE expert parameters (PEFT's ParamWrapper), which take no "
            f"dropout ({err}). Set discriminator_lora_dropout: 0, or set discriminator_lora_target_modules to linear "
            "layers only (e.g. q_proj,k_proj,v_proj,o_proj)."
        ) from err


def add_lora(discriminator, lora_config):
    """Wrap a full discriminator (`AutoModelForSequenceClassification`) into a LoRA `PeftModel`; the trainable weights
    (adapters and head) are kept in float32 so the plain AdamW keeps every small update."""
    from peft import get_peft_model

    with explained_lora_errors():
        model = get_peft_model(discriminator, lora_config_for(discriminator, lora_config))
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    head = model.get_base_model().score  # PEFT's ModulesToSaveWrapper: keep its frozen original in the same dtype
    head.float()
    keep_4bit_layout_for_training(model)
    return model


# --------------------------------------------------------------------------------------------------------------------
# Shared base: the discriminator as a second adapter of the student
# --------------------------------------------------------------------------------------------------------------------


class SharedBaseDiscriminator(nn.Module):
    """The discriminator of `discriminator_shared_base`: the student's PEFT model with adapter `DISCRIMINATOR_ADAPTER`
    active, plus a value head of its own.

    Only the head is a registered sub-module; the student (base and both adapters) is held by reference, so moving,
    saving or wrapping the student is done once, by the trainer, for the shared base. `parameters()` lists what this
    discriminator trains: its head and its adapter's LoRA weights (which live in the student's layers).
    """

    base_model_prefix = "backbone_module"  # read by gad_trl.discriminator.model.backbone

    def __init__(self, student, lora_config, pad_token_id: int | None = None):
        super().__init__()
        from peft import PeftModel

        if not isinstance(student, PeftModel):
            raise TypeError(f"A shared-base discriminator needs the student's PeftModel, not {type(student).__name__}.")
        self.__dict__["student"] = student  # not a sub-module: see the class docstring
        self.adapter_name = DISCRIMINATOR_ADAPTER
        self.lora_config = copy.deepcopy(lora_config)
        base = student.get_base_model()
        config = copy.deepcopy(base.config)
        config.num_labels = 1
        if pad_token_id is not None:
            config.pad_token_id = pad_token_id
        config.architectures = None
        self.config = config
        hidden_size = config.get_text_config().hidden_size
        # Like transformers' *ForSequenceClassification head (bias-free, normal(0, initializer_range)), in float32.
        self.score = nn.Linear(hidden_size, 1, bias=False, dtype=torch.float32)
        nn.init.normal_(self.score.weight, std=getattr(config.get_text_config(), "initializer_range", 0.02))
        injected = lora_config_for(base, lora_config)
        injected.task_type, injected.modules_to_save = "CAUSAL_LM", None  # the head lives here, not in the student
        with explained_lora_errors():
            student.add_adapter(self.adapter_name, injected)
        self.lora_config.target_modules = student.peft_config[self.adapter_name].target_modules  # as PEFT resolved them
        student.set_adapter("default")  # the student stays the active adapter; requires_grad follows the active one
        self.score.to(next(p.device for p in base.parameters()))

    @property
    def backbone_module(self) -> nn.Module:
        base = self.student.get_base_model()
        return getattr(base, base.base_model_prefix)

    def adapter_named_parameters(self):
        marker = f".{self.adapter_name}."
        return [(n, p) for n, p in self.student.named_parameters() if "lora_" in n and marker in n]

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        yield from super().named_parameters(prefix=prefix, recurse=recurse, remove_duplicate=remove_duplicate)
        for name, param in self.adapter_named_parameters():
            yield (f"{prefix}.student.{name}" if prefix else f"student.{name}"), param

    @property
    def dtype(self) -> torch.dtype:
        return self.score.weight.dtype

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        # One backbone: it checkpoints when the student's does (`gradient_checkpointing`), never on its own.
        if not getattr(self.backbone_module, "gradient_checkpointing", False):
            logger.warning(
                "discriminator_gradient_checkpointing has no effect with discriminator_shared_base: the backbone is "
                "the student's, so it follows `gradient_checkpointing`."
            )

    @contextmanager
    def active(self):
        """The discriminator adapter active (and trainable), the student's inactive (frozen), until the block ends."""
        previous = list(self.student.active_adapters)
        self.student.set_adapter(self.adapter_name)
        try:
            yield
        finally:
            self.student.set_adapter(previous[0] if len(previous) == 1 else previous)


def attach_shared_discriminator(student, args, pad_token_id: int | None) -> SharedBaseDiscriminator:
    """Add the discriminator adapter and head to a LoRA student (`discriminator_shared_base`)."""
    from peft import LoraConfig, PeftModel

    if not isinstance(student, PeftModel) or not isinstance(student.peft_config.get("default"), LoraConfig):
        raise ValueError(
            "discriminator_shared_base needs a LoRA student: the discriminator becomes a second adapter on the "
            "student's frozen base. Train the student with LoRA (`use_peft: true` on the CLI, `peft_config=LoraConfig"
            "(...)` in Python), or drop discriminator_shared_base (discriminator_use_peft gives a LoRA discriminator "
            "on its own base)."
        )
    discriminator = SharedBaseDiscriminator(student, discriminator_peft_config(args), pad_token_id)
    if args.disable_dropout:
        from trl.trainer.utils import disable_dropout_in_model

        disable_dropout_in_model(student)  # the new adapter's LoRA dropout too
    return discriminator


def discriminator_scope(discriminator):
    """Context in which the discriminator computes: the shared-base adapter switch, or nothing."""
    return discriminator.active() if isinstance(discriminator, SharedBaseDiscriminator) else nullcontext()


# --------------------------------------------------------------------------------------------------------------------
# Saving, resuming and the merged export
# --------------------------------------------------------------------------------------------------------------------


def is_peft_discriminator(discriminator) -> bool:
    if isinstance(discriminator, SharedBaseDiscriminator):
        return True
    from accelerate.utils import is_peft_model

    return is_peft_model(discriminator)


def is_adapter_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG_NAME))


def _base_name_or_path(discriminator) -> str | None:
    if isinstance(discriminator, SharedBaseDiscriminator):
        base = discriminator.student.get_base_model()
    else:
        base = discriminator.get_base_model()
    return getattr(base, "name_or_path", None) or getattr(base.config, "_name_or_path", None)


def save_discriminator_adapter(discriminator, save_dir: str) -> None:
    """Write a PEFT `SEQ_CLS` adapter folder (adapter_config.json + adapter_model.safetensors with the head), and
    `SETTINGS_NAME` with the pooling (saved in a full discriminator's config.json)."""

    os.makedirs(save_dir, exist_ok=True)
    from .shaping import RewardShaping

    with open(os.path.join(save_dir, SETTINGS_NAME), "w") as f:  # pooling and reward shaping: how it scores
        json.dump({POOLING_CONFIG_KEY: discriminator_pooling(discriminator),
                   **RewardShaping.of(discriminator).as_dict()}, f, indent=2)
    if not isinstance(discriminator, SharedBaseDiscriminator):
        discriminator.save_pretrained(save_dir)
        return
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(discriminator.student, adapter_name=discriminator.adapter_name)
    state[HEAD_KEY] = discriminator.score.weight
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(state, os.path.join(save_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(discriminator.lora_config)
    config.base_model_name_or_path = _base_name_or_path(discriminator)
    config.inference_mode = True
    config.save_pretrained(save_dir)


def load_discriminator_adapter(discriminator, adapter_dir: str) -> None:
    """Load a saved discriminator adapter (LoRA weights and head) into the training discriminator, in place."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(adapter_dir, device="cpu")
    if isinstance(discriminator, SharedBaseDiscriminator):
        head = weights.pop(HEAD_KEY, None)
        if head is None:
            raise ValueError(f"{adapter_dir} holds no value head ({HEAD_KEY}); it is not a GAD discriminator adapter.")
        target, adapter = discriminator.student, discriminator.adapter_name
        expected = discriminator.adapter_named_parameters()
        with torch.no_grad():
            discriminator.score.weight.copy_(head)
    else:
        target, adapter = discriminator, "default"
        expected = [(n, p) for n, p in discriminator.named_parameters() if p.requires_grad]
    result = set_peft_model_state_dict(target, weights, adapter_name=adapter)
    loaded = len(weights)  # the separate model's head is one of its weights; the shared one's was popped above
    if result.unexpected_keys or loaded != len(expected):
        raise ValueError(
            f"The discriminator adapter in {adapter_dir} does not fit this run's discriminator ({loaded} saved "
            f"tensors for {len(expected)} trainable ones; unexpected: {list(result.unexpected_keys)[:5]}). Resume "
            "with the discriminator_lora_* settings (r, target modules) of the run that wrote it."
        )


def check_resume_layout(discriminator, disc_dir: str) -> None:
    """A PEFT discriminator resumes from an adapter folder, a full one from a model folder; say which fix applies."""
    saved_peft, training_peft = is_adapter_folder(disc_dir), is_peft_discriminator(discriminator)
    if saved_peft and not training_peft:
        raise ValueError(
            f"{disc_dir} holds a LoRA discriminator adapter, but this run trains a full discriminator. Resume with the "
            "settings that wrote it (discriminator_use_peft: true, or discriminator_shared_base: true, with the same "
            "discriminator_lora_* fields), or start a new run (export_merged_discriminator gives a full model to "
            "start from via discriminator_model_name_or_path)."
        )
    if training_peft and not saved_peft:
        raise ValueError(
            f"{disc_dir} holds a full discriminator, but this run trains a LoRA discriminator "
            "(discriminator_use_peft / discriminator_shared_base). Resume without those options, or start a new run "
            f"with discriminator_model_name_or_path={disc_dir!r} to put LoRA on the trained discriminator."
        )


def _saved_weight_names(path: str, prefix: str) -> list[str] | None:
    """The tensor names of the `<prefix>*.safetensors` files in a local folder (headers only), or None without any."""
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(path) if f.startswith(prefix) and f.endswith(".safetensors"))
    if not files:
        return None
    names = []
    for name in files:
        with safe_open(os.path.join(path, name), framework="pt") as f:
            names.extend(f.keys())
    return names


def require_trained_value_head(path: str) -> None:
    """Refuse a local folder that holds no trained value head (`score` weights): a plain causal LM (e.g. the student's
    `model/` folder) or a causal-LM adapter would load with a randomly initialised head and give meaningless scores.
    Hub ids are not checked (nothing is downloaded for it)."""
    if not os.path.isdir(path):
        return
    if is_adapter_folder(path):
        names = _saved_weight_names(path, "adapter_model")
        if names is not None and not any(n.endswith(f".{HEAD_MODULE}.weight") for n in names):
            raise ValueError(
                f"{path} has no trained value head: it is a LoRA adapter without `{HEAD_MODULE}` weights (a causal-LM "
                "adapter, not a GAD discriminator), so it would score with a randomly initialised head. Pass the "
                "`discriminator/` (or `discriminator_merged/`) folder that GADTrainer.save_model wrote."
            )
        return
    architectures = []
    if os.path.isfile(os.path.join(path, "config.json")):
        with open(os.path.join(path, "config.json")) as f:
            architectures = json.load(f).get("architectures") or []
    names = _saved_weight_names(path, "model")
    if names is not None:
        has_head = any(n.split(".")[0] == HEAD_MODULE for n in names)
    else:  # no safetensors to read (e.g. pickled .bin weights): go by what transformers recorded in config.json
        has_head = not architectures or not all(a.endswith("ForCausalLM") for a in architectures)
    if not has_head:
        raise ValueError(
            f"{path} has no trained value head: its checkpoint holds no `{HEAD_MODULE}` weights (architectures "
            f"{architectures}: a plain causal LM, not a GAD discriminator), so it would score with a randomly "
            "initialised head. Pass the `discriminator/` (or `discriminator_merged/`) folder that "
            "GADTrainer.save_model wrote."
        )


def saved_adapter_pooling(adapter_dir: str) -> str:
    """The pooling an adapter folder was trained with (`SETTINGS_NAME`; `last` for a folder written before it was
    saved, as for a config.json without the key)."""

    path = os.path.join(adapter_dir, SETTINGS_NAME)
    if not os.path.isfile(path):
        return "last"
    with open(path) as f:
        return json.load(f).get(POOLING_CONFIG_KEY) or "last"


def load_saved_discriminator(path: str, **kwargs):
    """A saved discriminator folder as a model: a plain one with `AutoModelForSequenceClassification`, an adapter folder
    (`discriminator/` of a PEFT run) as its base + adapter + head through PEFT, with the pooling it was trained with.
    (transformers' own adapter loading would skip the head kept in `modules_to_save` and score with a random one.)
    A `GADValueHeadModel` folder, or a base without a sequence-classification class, loads as a `GADValueHeadModel`."""
    if not is_adapter_folder(path):
        return load_value_model(path, num_labels=1, **kwargs)
    from peft import PeftConfig, PeftModel

    base = PeftConfig.from_pretrained(path).base_model_name_or_path
    model = load_value_model(base, num_labels=1, **kwargs)
    model = PeftModel.from_pretrained(model, path)
    set_discriminator_pooling(model, saved_adapter_pooling(path))  # the base's config.json knows nothing of it
    saved_adapter_shaping(path).record(model)
    return model


def saved_adapter_shaping(adapter_dir: str):
    """The reward shaping an adapter folder was trained with (none for a folder written before it was recorded)."""
    from .shaping import RewardShaping

    settings = os.path.join(adapter_dir, SETTINGS_NAME)
    if not os.path.isfile(settings):
        return RewardShaping()
    with open(settings) as f:
        return RewardShaping.from_dict(json.load(f))


def export_merged_discriminator(discriminator, adapter_dir: str, output_dir: str, tokenizer=None) -> str:
    """A plain `AutoModelForSequenceClassification` folder: base + adapter merged (for the Hub, vLLM, reward use).

    The base is reloaded on CPU from the checkpoint the adapter was trained on; a 4-bit base is loaded with the same
    quantization and dequantized first, so the merged weights are the ones training saw (not the original ones).
    """
    from peft import PeftModel

    base_model = discriminator.student.get_base_model() if isinstance(discriminator, SharedBaseDiscriminator) else (
        discriminator.get_base_model()
    )
    source = _base_name_or_path(discriminator)
    if not source or (not os.path.exists(source) and "/" not in source):
        raise ValueError(
            f"Cannot merge the discriminator adapter: its base checkpoint {source!r} is not a path or Hub id. Merge it "
            "by hand: PeftModel.from_pretrained(<base AutoModelForSequenceClassification>, path).merge_and_unload()."
        )
    quantization_config = getattr(base_model.config, "quantization_config", None)
    dtype = base_model.dtype  # a 4-bit model reports its compute dtype (that of its non-quantized weights)
    kwargs = {} if quantization_config is None else {"quantization_config": quantization_config, "device_map": "cpu"}
    base = load_value_model(source, num_labels=1, dtype=dtype, **kwargs)
    if quantization_config is not None:
        base = base.dequantize()
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.pad_token_id = discriminator.config.pad_token_id
    set_discriminator_pooling(merged, discriminator_pooling(discriminator))  # into its config.json, as a full one's
    from .shaping import RewardShaping

    RewardShaping.of(discriminator).record(merged)
    merged.save_pretrained(output_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(output_dir)
    return output_dir
