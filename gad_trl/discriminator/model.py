"""The discriminator: a causal-LM backbone with a scalar value head, scored at the last valid response token (the
paper's pooling) or over the mean of the response tokens (`discriminator_pooling`, saved in its config)."""

from __future__ import annotations

import copy
import os
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers import PreTrainedModel

from .pooling import discriminator_pooling
from .value_head import load_value_model, value_model_from_config


@contextmanager
def replicated_loading(deepspeed_plugin=None):
    """Load a model whole on every process, whatever the launcher set up for the student.

    The discriminator is replicated (its gradients are all-reduced by the trainer) or sharded by GAD itself with FSDP2
    (`discriminator_sharding`), never by the student's launcher, so it must not be built the launcher's sharded way:
    under DeepSpeed ZeRO-3 with `zero3_init_flag`, transformers would partition it at
    creation (`deepspeed.zero.Init`) into empty parameters that only a DeepSpeed engine can use; under FSDP with
    `cpu_ram_efficient_loading`, every process but local rank 0 would get all-zero weights and wait for a broadcast
    from an FSDP wrapper that the discriminator never gets.
    """
    zero3_off = deepspeed_plugin.zero3_init_context_manager(enable=False) if deepspeed_plugin is not None else nullcontext()
    saved = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING")
    os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
    try:
        with zero3_off, _hf_deepspeed_config_cleared():
            yield
    finally:
        if saved is None:
            os.environ.pop("FSDP_CPU_RAM_EFFICIENT_LOADING", None)
        else:
            os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = saved


@contextmanager
def _hf_deepspeed_config_cleared():
    """transformers builds models under `deepspeed.zero.Init` whenever `is_deepspeed_zero3_enabled()`, which reads a
    module-level reference to the Trainer's DeepSpeed config. Under `accelerate launch` with ZeRO-3 that reference stays
    set inside `zero3_init_context_manager(enable=False)` (a no-op when the plugin's init flag is already off), so the
    discriminator would come out partitioned into empty parameters. Clear the reference while it is built."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def load_discriminator(
    student: str | PreTrainedModel,
    discriminator_model_name_or_path: str | None = None,
    init_kwargs: dict | None = None,
    pad_token_id: int | None = None,
    deepspeed_plugin=None,
    args=None,
) -> PreTrainedModel:
    """Build the discriminator as an `AutoModelForSequenceClassification` with `num_labels=1` (a `GADValueHeadModel`,
    the same layout on the architecture's `AutoModel`, for decoders without a sequence-classification class).

    - `discriminator_model_name_or_path` given: loaded from it (Hub id or local dir).
    - else, `student` a path/Hub id: loaded from the same checkpoint (backbone = student weights, new value head).
    - else, `student` a model instance: same architecture, backbone weights copied from the student in memory.

    Always whole on each process (`replicated_loading`), also under ZeRO-3 / FSDP launchers. With `args` (a
    `GADConfig`) asking for it, LoRA on the backbone (`discriminator_use_peft`) over a 4-bit base
    (`discriminator_load_in_4bit`): see `gad_trl.discriminator.adapters`.
    """
    from .adapters import add_lora, discriminator_peft_config, quantized_init_kwargs

    lora_config = discriminator_peft_config(args) if args is not None else None
    if args is not None:
        init_kwargs = quantized_init_kwargs(init_kwargs, args)
        if "quantization_config" in init_kwargs and not (discriminator_model_name_or_path or isinstance(student, str)):
            raise ValueError(
                "discriminator_load_in_4bit loads the discriminator from a checkpoint, but the student was passed as a "
                "model instance: set discriminator_model_name_or_path (or pass the student as a path / Hub id)."
            )
    with replicated_loading(deepspeed_plugin):
        disc = _load_discriminator(student, discriminator_model_name_or_path, init_kwargs, pad_token_id)
    return add_lora(disc, lora_config) if lora_config is not None else disc


def _load_discriminator(student, discriminator_model_name_or_path, init_kwargs, pad_token_id) -> PreTrainedModel:
    init_kwargs = dict(init_kwargs or {})
    if "quantization_config" not in init_kwargs:  # a 4-bit base is placed (and quantized) where device_map says
        init_kwargs.pop("device_map", None)  # the trainer places the discriminator itself
    # Like TRL's create_model_from_path: float32 unless asked otherwise (transformers 5 would take the checkpoint's
    # dtype, often bf16, and AdamW on bf16 weights loses small updates).
    init_kwargs.setdefault("dtype", torch.float32)
    source = discriminator_model_name_or_path or (student if isinstance(student, str) else None)
    if source is not None:
        disc = load_value_model(source, num_labels=1, **init_kwargs)
    else:
        config = copy.deepcopy(student.config)
        config.num_labels = 1
        disc = value_model_from_config(config, dtype=student.dtype)
        missing, unexpected = backbone(disc).load_state_dict(student_body_weights(student), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"Could not initialise the discriminator from the student's weights (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}); set GADConfig.discriminator_model_name_or_path to a checkpoint instead."
            )
    if pad_token_id is not None:
        # The reward-model convention (TRL, transformers) pools at the last non-pad token: keep the config in step with
        # the tokenizer so a reloaded discriminator works as a plain reward model too.
        disc.config.pad_token_id = pad_token_id
    score_head(disc)  # fail early on architectures without a value head
    return disc


def student_body_weights(student: nn.Module) -> dict[str, torch.Tensor]:
    """The student's transformer-body weights, keyed as in a plain model. A student already wrapped by PEFT keeps its
    base weights under `.base_layer.` and adds `lora_*` tensors: the discriminator starts from the base weights (a fresh
    adapter adds nothing to them; its own LoRA, if any, is added afterwards)."""
    weights = backbone(student).state_dict()
    if not hasattr(student, "get_base_model"):
        return weights
    # `modules_to_save` copies sit beside the `original_module` they were cloned from. Wrappers nest: LoRA on several
    # fused parameters of one module (MoE experts' `gate_up_proj` and `down_proj`, PEFT's `target_parameters`) keeps
    # the base weights under `experts.base_layer.base_layer.`, so every wrapper segment is dropped, not just one.
    base = {k: v for k, v in weights.items() if ".lora_" not in k and ".modules_to_save." not in k}
    return {".".join(p for p in k.split(".") if p not in _PEFT_WRAPPER_SEGMENTS): v for k, v in base.items()}


_PEFT_WRAPPER_SEGMENTS = ("base_layer", "original_module")


@contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode (dropout off) inside the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def backbone(model: nn.Module) -> nn.Module:
    """The transformer body of a CausalLM / SequenceClassification model (`model.model` for Qwen2, Llama, ...)."""
    if hasattr(model, "get_base_model"):  # a PEFT wrapper: the body of the model it wraps (LoRA layers inside)
        model = model.get_base_model()
    base = getattr(model, model.base_model_prefix, None) if hasattr(model, "base_model_prefix") else None
    if base is None:
        raise ValueError(f"{type(model).__name__} exposes no backbone under base_model_prefix; cannot use it for GAD.")
    return base


def score_head(model: nn.Module) -> nn.Module:
    head = getattr(model, "score", None)
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no `score` value head; GAD needs an AutoModelForSequenceClassification whose "
            "head is `model.score` (Qwen2, Llama, Mistral, Gemma, ... all have one) or a "
            "gad_trl.discriminator.value_head.GADValueHeadModel (any other decoder)."
        )
    return head


def last_token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scores `(B,)`: the value head applied to the hidden state of the last attended token of each row.

    The position comes from `attention_mask`, not from the pad token, so an EOS that equals the pad token is still
    the scored token (docs/algorithm.md, "Roles": the last real token of the response).
    """
    return sequence_scores(model, input_ids, attention_mask, pooling="last")


def sequence_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor | None = None,
    pooling: str | None = None,
) -> torch.Tensor:
    """Scores `(B,)` pooled as `pooling` (default: the model config's `discriminator_pooling`):

    - `last`: the value head at the last attended token (the paper's, and the reward-model convention);
    - `mean`: the value head applied to the mean hidden state over the response tokens (`response_mask`, 1 on the
      response, EOS included): every response token weighs in, not only the end-of-turn position, whose hidden
      state a small discriminator can read surface cues from.
    """
    pooling = pooling or discriminator_pooling(model)
    sharded_scores = getattr(model, "gad_last_token_scores", None)  # set by discriminator_sharding.shard_discriminator
    if sharded_scores is not None:
        return sharded_scores(input_ids, attention_mask, response_mask, pooling)
    return backbone_and_head_scores(model, input_ids, attention_mask, response_mask, pooling)


def backbone_and_head_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor | None = None,
    pooling: str = "last",
) -> torch.Tensor:
    """`sequence_scores` computed directly from the model's backbone and value head."""
    hidden = backbone(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    if pooling == "last":
        positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
        last = (positions * attention_mask.to(positions.dtype)).argmax(dim=1)
        pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    else:
        if response_mask is None:
            raise ValueError(
                "Mean pooling needs the response positions: pass response_starts to score_sequences (the prompt "
                "length of each sequence)."
            )
        weights = (response_mask * attention_mask).to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    return float32_head(score_head(model), pooled).squeeze(-1)


def float32_head(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The value head in float32, outside autocast: under bf16 the scores (= GRPO rewards) would be rounded to ~3
    significant digits, tying completions of one group and coarsening their advantages. Gradients still reach
    half-precision head weights through the casts."""
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        if isinstance(head, nn.Linear):
            bias = None if head.bias is None else head.bias.float()
            return nn.functional.linear(hidden.float(), head.weight.float(), bias)
        # A wrapped head (e.g. a LoRA discriminator's, kept in float32 over a bf16 / 4-bit backbone).
        return head(hidden.to(next(head.parameters()).dtype)).float()


def pad_right(sequences: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into `(input_ids, attention_mask)`."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def _response_mask(starts_or_masks: list, lengths: list[int], width: int, device) -> torch.Tensor:
    """(rows, width) 0/1 mask of the tokens mean pooling averages: from each start on, or each given mask (padded
    right). At least the last token counts, so an empty response still gets a score (its end-of-turn position)."""
    rows = []
    for item, length in zip(starts_or_masks, lengths, strict=True):
        if isinstance(item, (list, tuple)):
            if len(item) != length:
                raise ValueError(f"A response mask of {len(item)} entries for a sequence of {length} tokens.")
            row = list(item)
        else:
            start = min(int(item), length - 1)
            row = [0] * start + [1] * (length - start)
        row[length - 1] = 1
        rows.append(row + [0] * (width - length))
    return torch.tensor(rows, device=device, dtype=torch.long)


def score_sequences(
    model: nn.Module,
    sequences: list[list[int]],
    pad_token_id: int,
    device,
    batch_size: int | None = None,
    response_starts: list[int] | None = None,
) -> torch.Tensor:
    """Score token sequences in chunks of `batch_size` (all at once when None); keeps autograd if enabled.

    `response_starts[i]`: index in `sequences[i]` where the response begins (= the prompt's length), or, for a
    tool-using trajectory, a 0/1 list over the whole sequence marking the tokens mean pooling averages (assistant
    tokens: tool results are context, not the answer); needed by `mean` pooling, ignored by `last`. Pooling follows
    the model config (`discriminator_pooling`).
    """
    pooling = discriminator_pooling(model)
    if pooling != "last" and response_starts is None:
        raise ValueError(f"{pooling} pooling needs response_starts (the prompt length of each sequence).")
    if response_starts is not None and len(response_starts) != len(sequences):
        raise ValueError(f"Got {len(response_starts)} response_starts for {len(sequences)} sequences.")
    batch_size = batch_size or len(sequences)
    # Sort by length within the call so chunks pad little; restore the order at the end.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_right([sequences[i] for i in idx], pad_token_id, device)
        response_mask = None
        if pooling != "last":
            response_mask = _response_mask([response_starts[i] for i in idx], [len(sequences[i]) for i in idx],
                                           ids.size(1), ids.device)
        chunks.append(sequence_scores(model, ids, mask, response_mask, pooling))
    scores = torch.cat(chunks)
    inverse = torch.empty(len(order), dtype=torch.long, device=scores.device)
    inverse[torch.tensor(order, device=scores.device)] = torch.arange(len(order), device=scores.device)
    return scores[inverse]
