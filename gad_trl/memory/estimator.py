"""Per-GPU memory estimate of a GAD run (student, reference, discriminator) before renting GPUs.

Everything is computed from the model's *config* (no weights are downloaded): the models are built on the `meta`
device, so parameter counts, LoRA adapter sizes and the share of 4-bit-quantizable weights are exact for the
architecture, and the byte counts of weights, gradients and optimizer states follow from the precision of each mode.
Activations come from a per-token formula of a Llama/Qwen2-style decoder (`ACTIVATION_FORMULA`), checked against
measured peaks on CPU by `python -m benchmarks.memory`. `ASSUMPTIONS` lists what the estimate takes for granted; the
CLI (`gad-trl estimate-memory`) prints it with every report.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

GiB = 1024**3

# One line per mode: what sits on each GPU.
MODES: dict[str, str] = {
    "replicated": "every GPU holds the whole student, reference and discriminator (single GPU / DDP launcher)",
    "sharded_student": "ZeRO-3/FSDP shards student + reference over N GPUs; the discriminator is replicated on each",
    "sharded": "student, reference and discriminator all sharded over N GPUs (ZeRO-3 / FSDP2), "
    "float32 master weights + optimizer, bf16 compute",
    "lora": "LoRA student (reference = adapters off) + LoRA discriminator on its own frozen base, value head trained",
    "qlora": "as lora, with both frozen bases in 4-bit (bitsandbytes nf4)",
    "shared_base": "one frozen base: student adapter, discriminator adapter + value head, reference = adapters off",
    "shared_base_qlora": "as shared_base, with the shared base in 4-bit (nf4)",
}

ACTIVATION_FORMULA = (
    "saved for backward per token and decoder layer: 8h + 7ah + 2a*kv + 4aI bytes (two RMSNorms keep a float32 input "
    "and the normalised value; q/k/v input, rotated q and k, v, attention output and o_proj input; MLP input, gate, "
    "SiLU(gate), up and their product), h = hidden, kv = key/value width, I = MLP width, a = bytes of the compute "
    "dtype; with gradient checkpointing only each layer's input (r*h) is kept plus one layer recomputed in backward"
)

ASSUMPTIONS = [
    "Parameters counted exactly from the model config (built on the meta device; no weights read).",
    "Sequence length = prompt length + max_completion_length (worst case: every batch padded to the longest).",
    "Activations: " + ACTIVATION_FORMULA + "; plus a backward working set of a*(I+h) per token, the 4-D SDPA mask "
    "(1 byte per token pair) and, for the student, TRL's fused LM head (tiles of 4096 tokens x 32768 vocab; backward "
    "accumulates the hidden-state gradient and, if trained, the LM-head gradient in float32).",
    "SDPA attention is memory-efficient/flash (no L x L score matrix); eager attention needs far more.",
    "Student activations at per_device_train_batch_size sequences (plus, with sft_loss_coef > 0, a forward+backward "
    "over one teacher answer per prompt with full-vocabulary logits); reference (and old log-probs) forward without "
    "gradient at the same batch; discriminator at discriminator_mini_batch_size sequences, or the whole generation "
    "batch of the device (per_device_train_batch_size x steps_per_generation completions + one teacher per prompt) "
    "when it is unset.",
    "Full fine-tuning, replicated: weights, gradients and both AdamW moments in the load dtype (`dtype`, "
    "`discriminator_init_kwargs.dtype`; the discriminator defaults to float32); DDP gradient buckets (one more "
    "gradient copy) when num_gpus > 1.",
    "Sharded: float32 master weights (4 B/param), float32 gradients (4) and AdamW moments (8) split over N GPUs, plus "
    "the bf16 gathered copy of the root module (embeddings, LM head) and two decoder layers being computed, and in "
    "backward the unsharded bf16 gradient and two float32 reduce-scatter inputs of the largest unit (10 B/param) "
    "(DeepSpeed ZeRO-3 keeps bf16 weights + float32 master instead: the same 16 B/param). Reference sharded in the "
    "load dtype.",
    "LoRA / QLoRA: adapters and the discriminator's value head trained in float32 (16 B/param with AdamW), except a "
    "4-bit student's adapter, which TRL's GRPOTrainer casts to bfloat16 (weights, gradients and AdamW moments: 8 "
    "B/param; the discriminator's adapter stays float32); frozen base in the load dtype, or nf4 (0.5 B/param + one "
    "float32 absmax per 64 weights; nested quantisation: ~0.516 B/param) for every Linear but the LM head / value head, the rest in the load dtype (bitsandbytes "
    "dequantises one weight at a time for its matmul: no dequantised copy of the model is held). LoRA targets: "
    "`lora_target_modules` (student) and `discriminator_lora_target_modules` (discriminator, with its own "
    "`discriminator_lora_r` / `_alpha` / `_dropout`) or PEFT's default for the architecture. Adapters are replicated "
    "on every GPU.",
    "Peak = the largest of the phases (generation, reference forward, discriminator update, student update): "
    "weights and optimizer states stay resident, gradients live only during their model's update (zero_grad with "
    "set_to_none), the student's gradients are freed before the next generation batch is scored. In an update, "
    "gradients and activations add up when several micro-batches (gradient_accumulation_steps > 1) or discriminator "
    "mini-batches accumulate; a single backward peaks at max(activations + head gradient, gradients + one layer).",
    "Generation with `use_vllm: true` runs on the vLLM server's own GPU(s): not counted. Without vLLM the student "
    "generates in place: its KV cache for the whole generation batch is counted (and, sharded, the gathered weights).",
    "Optimizers are torch AdamW, two moments per trained parameter in its dtype: the student's `optim` (transformers' "
    "default `adamw_torch_fused` steps in place; `adamw_torch` is the foreach kernel), the discriminator's plain "
    "`torch.optim.AdamW` (foreach on CUDA). Each optimizer step is a phase of its own: gradients alive plus, for the "
    "foreach kernel, sqrt(second moment) of every parameter at once (one more moment-sized tensor; on CPU the "
    "per-tensor loop holds two of the largest tensor). 8-bit or paged optimizers need less. 'Fits' compares the "
    "peak with 90% of the GPU's memory, 1 GB = 10^9 bytes.",
    "Not counted: the CUDA context and kernels (~0.5-1 GiB per GPU), allocator fragmentation, NCCL buffers, "
    "dataloader tensors. Keep 10-15% headroom.",
]

# Public config numbers of a few architectures, used ONLY when the config cannot be read (offline, no Hub): a fallback
# so the README's table can be regenerated without network. Source: the models' config.json on the Hugging Face Hub.
KNOWN_ARCHITECTURES: dict[str, dict] = {
    "Qwen/Qwen2.5-0.5B-Instruct": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-1.5B-Instruct": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-3B-Instruct": dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    ),
    "Qwen/Qwen2.5-7B-Instruct": dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
    ),
    "Qwen/Qwen2.5-14B-Instruct": dict(
        hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
        num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False,
    ),
}
for _name in list(KNOWN_ARCHITECTURES):  # the base models share their Instruct sibling's architecture
    KNOWN_ARCHITECTURES[_name.removesuffix("-Instruct")] = KNOWN_ARCHITECTURES[_name]

SHARDED_MODES = ("sharded_student", "sharded")  # need num_gpus >= 2
PEFT_MODES = ("lora", "qlora", "shared_base", "shared_base_qlora")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class MemoryEstimateError(ValueError):
    """Bad input to the memory estimate (unknown mode, impossible GPU count, unreadable model config, ...)."""


# ---------------------------------------------------------------------------------------------------------- config
def load_model_config(name_or_path: str, trust_remote_code: bool = False):
    """`(config, source)`: the config through `AutoConfig` (local dir or Hub id); offline, the built-in table."""
    import os

    from transformers import AutoConfig

    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise MemoryEstimateError(
            f"Model directory {name_or_path!r} does not exist; pass a local model directory (with config.json) or "
            "a Hub id such as Qwen/Qwen2.5-7B-Instruct."
        )
    name_or_path = os.path.expanduser(name_or_path)
    try:
        return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code), "config.json"
    except (OSError, ValueError) as err:
        if name_or_path in KNOWN_ARCHITECTURES:
            from transformers import Qwen2Config

            config = Qwen2Config(**KNOWN_ARCHITECTURES[name_or_path])
            return config, "built-in table of public configs (offline fallback: the Hub config could not be read)"
        if os.path.isdir(name_or_path):
            raise MemoryEstimateError(f"Cannot read the config of {name_or_path!r}: {err}") from err
        raise MemoryEstimateError(
            f"Cannot read the config of {name_or_path!r} ({type(err).__name__}: {err}). Pass a local model directory "
            f"with a config.json, go online, or use one of the built-in architectures: {', '.join(sorted(KNOWN_ARCHITECTURES))}."
        ) from err


@dataclass
class ModelShape:
    """What the estimate needs to know about one architecture, counted exactly on the meta device."""

    name: str
    config_source: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    kv_width: int  # num_key_value_heads * head_dim
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    causal_lm_params: int  # student / reference (tied weights counted once)
    lm_head_params: int  # 0 when tied to the embeddings
    discriminator_params: int  # AutoModelForSequenceClassification(num_labels=1): backbone + value head
    value_head_params: int
    causal_lm_quantized_params: int  # weights of the Linear layers a 4-bit load quantizes
    discriminator_quantized_params: int
    layer_params: int  # one decoder layer
    root_params: int  # parameters outside the decoder layers (embeddings, final norm, LM head)
    lora_params: int | None  # LoRA A+B of one adapter with the given settings (None: peft not installed)
    lora_input_width_per_layer: int | None  # sum of in_features of the LoRA-targeted Linears of one layer (dropout copies)
    lora_target_modules: list[str] = field(default_factory=list)


def _meta_model(config, kind: str):
    import torch
    from transformers import AutoModelForCausalLM

    from ..discriminator.value_head import value_model_from_config

    config = copy.deepcopy(config)
    with torch.device("meta"):
        if kind == "causal":
            return AutoModelForCausalLM.from_config(config)
        config.num_labels = 1
        return value_model_from_config(config)  # the discriminator GAD builds (a value-head fallback where needed)


def _quantized_params(model) -> int:
    """Parameters of the Linear weights that transformers' bitsandbytes 4-bit load replaces (not the output layers)."""
    from torch import nn
    from transformers.quantizers.base import get_keys_to_not_convert

    skip = set(get_keys_to_not_convert(model))
    return sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(name == k or name.endswith("." + k) or name.startswith(k + ".") for k in skip)
    )


def _count_lora(config, lora_r, lora_alpha, lora_target_modules):
    """(adapter parameters, in_features of the adapted Linears of one layer, target names) as peft builds them;
    (None, None, []) without peft."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        return None, None, []
    targets = lora_target_modules
    if isinstance(targets, list) and len(targets) == 1 and targets[0] == "all-linear":
        targets = "all-linear"
    model = get_peft_model(
        _meta_model(config, "causal"),
        LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=targets, task_type="CAUSAL_LM"),
    )
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    first_layer = [m for n, m in model.named_modules() if hasattr(m, "lora_A") and ".layers.0." in f".{n}."]
    return params, sum(m.in_features for m in first_layer), sorted(model.peft_config["default"].target_modules)


def count_model(
    name_or_path: str,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_target_modules: list[str] | str | None = None,
    trust_remote_code: bool = False,
    config=None,
) -> ModelShape:
    """Count the parameters of the student (causal LM), the discriminator and a LoRA adapter from the config."""
    source = "given config"
    if config is None:
        config, source = load_model_config(name_or_path, trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    causal = _meta_model(config, "causal")
    disc = _meta_model(config, "seqcls")
    causal_params = sum(p.numel() for p in causal.parameters())  # parameters() yields a tied weight once
    head = causal.get_output_embeddings()
    tied = head is not None and head.weight is causal.get_input_embeddings().weight
    lm_head_params = 0 if head is None or tied else head.weight.numel()
    layers = [m for m in causal.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise MemoryEstimateError(
            f"{type(causal).__name__} has no *DecoderLayer modules; the estimate covers decoder-only transformers."
        )
    layer_params = sum(p.numel() for p in layers[0].parameters())
    value_head = getattr(disc, "score", None)
    if value_head is None:
        raise MemoryEstimateError(f"{type(disc).__name__} has no `score` value head; GAD cannot use this architecture.")

    lora_params, lora_width, target_names = _count_lora(config, lora_r, lora_alpha, lora_target_modules)

    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ModelShape(
        name=name_or_path,
        config_source=source,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_layers=text.num_hidden_layers,
        num_heads=heads,
        kv_width=kv_heads * head_dim,
        head_dim=head_dim,
        vocab_size=text.vocab_size,
        tied_embeddings=tied,
        causal_lm_params=causal_params,
        lm_head_params=lm_head_params,
        discriminator_params=sum(p.numel() for p in disc.parameters()),
        value_head_params=sum(p.numel() for p in value_head.parameters()),
        causal_lm_quantized_params=_quantized_params(causal),
        discriminator_quantized_params=_quantized_params(disc),
        layer_params=layer_params,
        root_params=causal_params - layer_params * len(layers),
        lora_params=lora_params,
        lora_input_width_per_layer=lora_width,
        lora_target_modules=target_names,
    )


# ---------------------------------------------------------------------------------------------------------- settings
@dataclass
class RunSettings:
    """The run settings the estimate depends on (read from a recipe by the CLI; names as in GADConfig/ModelConfig)."""

    num_gpus: int = 1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    steps_per_generation: int = 1
    num_generations: int = 8
    prompt_length: int = 512
    max_completion_length: int = 256
    gradient_checkpointing: bool = False
    discriminator_gradient_checkpointing: bool | None = None
    discriminator_mini_batch_size: int | None = None
    beta: float = 0.0
    sft_loss_coef: float = 1.0  # GADConfig.sft_loss_coef: > 0 adds a teacher cross-entropy forward to the GAD step
    student_dtype: str = "float32"  # load dtype of the student / reference (ModelConfig.dtype)
    discriminator_dtype: str = "float32"  # load dtype of the discriminator
    bf16: bool = True  # autocast / mixed-precision compute in bf16
    use_vllm: bool = False
    use_bnb_nested_quant: bool = False
    lora_dropout: float = 0.05  # TRL ModelConfig's default; > 0 keeps a dropout copy of each LoRA input
    discriminator_lora_dropout: float | None = None  # GADConfig.discriminator_lora_dropout; None: as lora_dropout
    device: str = "cuda"  # "cpu" changes TRL's fused LM head (it scores every position, not only completions)
    optim: str = "adamw_torch_fused"  # the student's TrainingArguments.optim (transformers' default with torch >= 2.8)
    async_generation: bool = False  # GADConfig.async_generation: one generation batch held on the host (below)

    def __post_init__(self):
        if self.num_gpus < 1:
            raise MemoryEstimateError(f"num_gpus must be >= 1, got {self.num_gpus}.")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation", "num_generations", "max_completion_length"):
            if getattr(self, name) < 1:
                raise MemoryEstimateError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.prompt_length < 0:
            raise MemoryEstimateError(f"prompt_length must be >= 0, got {self.prompt_length}.")
        if self.discriminator_mini_batch_size is not None and self.discriminator_mini_batch_size < 1:
            raise MemoryEstimateError("discriminator_mini_batch_size must be a positive integer or None.")
        for name in ("student_dtype", "discriminator_dtype"):
            if getattr(self, name) not in DTYPE_BYTES:
                raise MemoryEstimateError(
                    f"{name}={getattr(self, name)!r} is not supported; use one of {', '.join(DTYPE_BYTES)}."
                )

    @property
    def sequence_length(self) -> int:
        return self.prompt_length + self.max_completion_length

    @property
    def generation_batch(self) -> int:
        """Completions one device scores per generation batch."""
        return self.per_device_train_batch_size * self.steps_per_generation

    @property
    def held_batch_bytes(self) -> int:
        """Host memory of the completions `async_generation` holds while the next step trains, in the main process
        (which receives every process's batch from the server): token ids and sampling log-probabilities as the
        Python lists TRL's client parses them into, about 36 bytes per id (int object + list slot) and 96 per
        log-probability (float in a one-element top-k list), plus the prompt ids of each unique prompt."""
        if not self.async_generation:
            return 0
        completions = self.generation_batch * self.num_gpus
        prompts = math.ceil(completions / self.num_generations)
        return completions * self.max_completion_length * (36 + 96) + prompts * self.prompt_length * 36

    @property
    def discriminator_batch(self) -> int:
        """Sequences of one discriminator forward with gradients."""
        teachers = math.ceil(self.generation_batch / self.num_generations)
        total = self.generation_batch + teachers
        return min(self.discriminator_mini_batch_size or total, total)

    @property
    def discriminator_checkpointing(self) -> bool:
        if self.discriminator_gradient_checkpointing is None:
            return self.gradient_checkpointing
        return self.discriminator_gradient_checkpointing


# ---------------------------------------------------------------------------------------------------------- formulas
def layer_activation_bytes_per_token(shape: ModelShape, a: int) -> int:
    """Bytes one decoder layer saves for backward per token (ACTIVATION_FORMULA)."""
    h, kv, inter = shape.hidden_size, shape.kv_width, shape.intermediate_size
    return 8 * h + 7 * a * h + 2 * a * kv + 4 * a * inter


def no_grad_forward_bytes_per_token(shape: ModelShape, a: int, r: int) -> int:
    """Peak transient per token of a forward without gradients (residual, norm in float32, MLP intermediates)."""
    h, inter = shape.hidden_size, shape.intermediate_size
    return r * h + 4 * h + a * (2 * h + 3 * inter)


def backbone_training_bytes(
    shape: ModelShape, batch: int, length: int, a: int, r: int, checkpointing: bool, lora_dropout: bool
) -> int:
    """Peak activation bytes of a forward+backward of the decoder stack over `batch` x `length` tokens."""
    tokens = batch * length
    layer = layer_activation_bytes_per_token(shape, a)
    if lora_dropout:  # LoRA dropout keeps its output and its mask for each targeted Linear
        layer += (a + 1) * shape.lora_input_width_per_layer
    fixed = (4 + a) * shape.hidden_size + 2 * 4 * shape.head_dim  # final norm, rotary cos/sin
    working = a * (shape.intermediate_size + shape.hidden_size)  # gradients of one layer's widest tensors
    if checkpointing:
        stored = shape.num_layers * r * shape.hidden_size + layer  # layer inputs + the layer being recomputed
    else:
        stored = shape.num_layers * layer
    mask = batch * length * length  # SDPA's boolean 4-D padding mask, built once per forward
    return tokens * (stored + fixed + working) + mask


def teacher_cross_entropy_bytes(shape: ModelShape, settings: RunSettings, a: int, r: int, lora_dropout: bool) -> int:
    """The `sft_loss_coef` term's plain forward+backward over one teacher answer per prompt of the micro-batch, alive
    next to the GRPO graph until their sum's backward: the decoder stack, plus full-vocabulary logits (in the compute
    dtype, their float32 copy for the loss, and its gradient)."""
    if settings.sft_loss_coef <= 0:
        return 0
    rows = math.ceil(settings.per_device_train_batch_size / settings.num_generations)
    length = settings.sequence_length
    backbone = backbone_training_bytes(shape, rows, length, a, r, settings.gradient_checkpointing, lora_dropout)
    return backbone + rows * length * shape.vocab_size * (a + 4 + 4)


def last_layer_backward_bytes(shape: ModelShape, batch: int, length: int, a: int) -> int:
    """Activations still alive when backward reaches the first decoder layer: that layer's and the working set."""
    return batch * length * (layer_activation_bytes_per_token(shape, a) + a * (shape.intermediate_size + shape.hidden_size))


def update_peak(part: Part, end_activations: int, first_gradients: int, accumulates: bool) -> int:
    """Bytes above the resident ones while a model's update runs. Backward frees each layer's activations as it
    allocates that layer's gradients, so a first backward peaks at its start (all activations + the gradients of the
    head, computed first) or its end (all gradients + the first layer's activations). A later micro-batch or
    mini-batch runs its whole forward/backward on top of the gradients of the earlier ones: both add up."""
    if accumulates:
        return part.gradients + part.activations
    return max(part.activations + first_gradients, part.gradients + end_activations)


def fused_lm_head_bytes(shape: ModelShape, batch: int, settings: RunSettings, a: int, head_trained: bool, grad: bool):
    """TRL's fused LM head (`trl.kernels.ChunkedLogProbFunction`): the hidden rows it keeps, its tile buffer (always
    `min(N, 4096) x 32768` wide), and in backward the float32 accumulators of the hidden-state gradient and (if the
    head is trained) of the head's weight gradient. Without Triton (CPU) the tile is folded by torch ops that hold about
    four float32 tile-sized temporaries; with Triton (CUDA) only positions with a label (the completion) are scored."""
    n = batch * (settings.max_completion_length if settings.device == "cuda" else settings.sequence_length - 1)
    h, vocab = shape.hidden_size, shape.vocab_size
    rows = min(n, 4096)
    tile = rows * 32768 * a
    if settings.device != "cuda":
        tile += 4 * rows * min(vocab, 32768) * 4
    saved = n * a * h
    if not grad:
        return saved + tile
    return saved + tile + n * 4 * h + (4 * vocab * h if head_trained else 0)


# ---------------------------------------------------------------------------------------------------------- estimate
@dataclass
class Part:
    """Per-GPU bytes of one model."""

    weights: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    note: str = ""

    @property
    def resident(self) -> int:
        return self.weights + self.optimizer


@dataclass
class ModeEstimate:
    mode: str
    num_gpus: int
    student: Part
    reference: Part
    discriminator: Part
    extras: dict[str, int]  # resident extras: DDP buckets, gathered shards, ...
    phases: dict[str, int]  # peak bytes of each phase
    generation_kv_cache: int = 0

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["peak"] = self.peak
        out["peak_phase"] = self.peak_phase
        return out


def adamw_step_bytes(part: Part, optim: str, device: str, largest_moment: int) -> int:
    """Temporaries of one AdamW step over `part`'s trained parameters. The fused kernel (`adamw_torch_fused`) updates
    in place. The foreach kernel (a plain `torch.optim.AdamW` on CUDA, `optim: adamw_torch`) computes sqrt(exp_avg_sq)
    of every parameter at once: one more moment-sized tensor. On CPU torch loops over the tensors, holding two
    temporaries the size of one tensor's moment at a time (the largest: `largest_moment` bytes)."""
    if optim.endswith("_fused") or part.optimizer == 0:
        return 0
    if device != "cuda":
        return 2 * largest_moment
    return part.optimizer // 2


def nf4_bytes_per_param(nested: bool) -> float:
    # 4 bits per weight + the float32 absmax of each 64-weight block; nested: 8-bit absmax + a float32 per 256 blocks
    return 0.5 + (1 / 64 + 4 / (64 * 256) if nested else 4 / 64)


def estimate(student: ModelShape, discriminator: ModelShape, settings: RunSettings, mode: str) -> ModeEstimate:
    """Per-GPU memory of `mode` (one of MODES) for a student and a discriminator architecture."""
    if mode not in MODES:
        raise MemoryEstimateError(f"Unknown mode {mode!r}; choose from {', '.join(MODES)}.")
    if mode in SHARDED_MODES and settings.num_gpus < 2:
        raise MemoryEstimateError(f"Mode {mode} shards over several GPUs: it needs num_gpus >= 2 (got {settings.num_gpus}).")
    if mode in PEFT_MODES and (student.lora_params is None or discriminator.lora_params is None):
        raise MemoryEstimateError(f"Mode {mode} needs peft to count the LoRA adapters: pip install 'gad_trl[peft]'.")
    shared = mode.startswith("shared_base")
    if shared and discriminator.name != student.name:
        raise MemoryEstimateError(
            f"Mode {mode} puts the discriminator on the student's base: it needs discriminator_model_name_or_path unset "
            f"(got a different discriminator, {discriminator.name!r})."
        )
    s = settings
    n = s.num_gpus
    b_s, b_d = DTYPE_BYTES[s.student_dtype], DTYPE_BYTES[s.discriminator_dtype]
    bf16 = s.bf16 or s.student_dtype == "bfloat16"
    a_s = 2 if bf16 else b_s  # compute bytes of the student's activations
    a_d = 2 if (s.bf16 or s.discriminator_dtype == "bfloat16") else b_d
    length = s.sequence_length
    P, Pd = student.causal_lm_params, discriminator.discriminator_params
    ref_needed = s.beta != 0.0
    extras: dict[str, int] = {}
    peft = mode in ("lora", "qlora") or shared
    quantized = mode in ("qlora", "shared_base_qlora")
    q = nf4_bytes_per_param(s.use_bnb_nested_quant)

    def frozen_base(shape: ModelShape, params: int, quantized_params: int, b: int) -> int:
        if not quantized:
            return params * b
        return int(quantized_params * q + (params - quantized_params) * b)

    # ---- student and reference
    if mode in ("sharded", "sharded_student"):
        st = Part(4 * P // n, 4 * P // n, 8 * P // n, note="float32 master shard; bf16 compute")
        ref = Part(P * b_s // n if ref_needed else 0, note="sharded, frozen" if ref_needed else "beta = 0: none")
        extras["student+reference gathered root + 2 layers"] = a_s * (student.root_params + 2 * student.layer_params)
        r_s = 2 if bf16 else 4
    elif peft:
        A = student.lora_params
        base = frozen_base(student, P, student.causal_lm_quantized_params, b_s)
        # TRL's GRPOTrainer casts a quantized student's trainable weights to bfloat16 (the QLoRA paper's advice), so
        # its adapter, gradients and AdamW moments are bf16; over a 16/32-bit base peft keeps the adapter float32.
        t = 2 if quantized else 4
        st = Part(base + t * A, t * A, 2 * t * A,
                  note=f"{'nf4' if quantized else s.student_dtype} base + {'bf16' if quantized else 'float32'} LoRA")
        ref = Part(0, note="adapters off (no copy)")
        r_s = b_s  # the residual stream stays in the dtype of the (non-quantized) weights under autocast
    else:  # replicated
        st = Part(P * b_s, P * b_s, 2 * P * b_s, note=f"{s.student_dtype} weights, grads, AdamW moments")
        ref = Part(P * b_s if ref_needed else 0, note=s.student_dtype if ref_needed else "beta = 0: none")
        if n > 1:
            extras["student DDP gradient buckets"] = P * b_s
        r_s = b_s
    st.activations = backbone_training_bytes(
        student, s.per_device_train_batch_size, length, a_s, r_s, s.gradient_checkpointing, lora_dropout=peft and s.lora_dropout > 0
    ) + fused_lm_head_bytes(student, s.per_device_train_batch_size, s, a_s, head_trained=not peft, grad=True)
    st.activations += teacher_cross_entropy_bytes(student, s, a_s, r_s, lora_dropout=peft and s.lora_dropout > 0)
    # The reference (and the old log-probs, with vLLM importance sampling) run a forward without gradients.
    no_grad = s.per_device_train_batch_size * length * no_grad_forward_bytes_per_token(student, a_s, r_s)
    no_grad += fused_lm_head_bytes(student, s.per_device_train_batch_size, s, a_s, head_trained=False, grad=False)
    ref.activations = no_grad if (ref_needed or peft) else 0

    # ---- discriminator
    H = discriminator.value_head_params
    if mode == "sharded":
        dp = Part(4 * Pd // n, 4 * Pd // n, 8 * Pd // n, note="float32 master shard; bf16 compute")
        extras["discriminator gathered root + 2 layers"] = a_d * (
            discriminator.root_params - discriminator.lm_head_params + 2 * discriminator.layer_params
        )
        r_d = 2 if s.bf16 else 4
    elif shared:
        A = discriminator.lora_params
        dp = Part(4 * (A + H), 4 * (A + H), 8 * (A + H), note="2nd adapter + value head on the student's base")
        r_d, a_d = r_s, a_s
    elif peft:
        A = discriminator.lora_params
        base = frozen_base(discriminator, Pd - H, discriminator.discriminator_quantized_params, b_d)
        dp = Part(base + 4 * (A + H), 4 * (A + H), 8 * (A + H), note=f"own {'nf4' if quantized else s.discriminator_dtype} base + LoRA + head")
        r_d = b_d
    else:
        dp = Part(Pd * b_d, Pd * b_d, 2 * Pd * b_d, note=f"{s.discriminator_dtype} weights, grads, AdamW moments (replicated)")
        r_d = b_d
    d_dropout = s.lora_dropout if s.discriminator_lora_dropout is None else s.discriminator_lora_dropout
    dp.activations = backbone_training_bytes(
        discriminator, s.discriminator_batch, length, a_d, r_d, s.discriminator_checkpointing,
        lora_dropout=peft and d_dropout > 0,
    )

    # ---- phases
    resident = st.resident + ref.resident + dp.resident + sum(extras.values())
    head_share = 0 if peft else student.vocab_size * student.hidden_size / P  # LM-head gradient comes first
    disc_chunks = math.ceil((s.generation_batch + math.ceil(s.generation_batch / s.num_generations)) / s.discriminator_batch)
    # FSDP2 / ZeRO-3 backward: the unsharded bf16 gradient of the unit being reduced and its float32 reduce-scatter
    # input, plus the previous unit's input that FSDP2 keeps until this one starts (reduce_scatter_max_input_buffers=1):
    # 10 B/param of the largest unit (embeddings or LM head, else a decoder layer).
    def reduce_buffers(shape: ModelShape) -> int:
        return 10 * max(shape.vocab_size * shape.hidden_size, shape.layer_params)

    def largest_moment(shape: ModelShape, part: Part, params: int) -> int:
        # A full model's largest tensor is its embedding (or LM head); LoRA tensors are small enough to leave out.
        return 0 if peft else part.optimizer * shape.vocab_size * shape.hidden_size // (2 * params)

    stepping = resident - sum(v for k, v in extras.items() if "gathered" in k)
    student_reduce = reduce_buffers(student) if mode in SHARDED_MODES else 0
    disc_reduce = reduce_buffers(discriminator) if mode == "sharded" else 0
    phases = {
        "discriminator update": resident + disc_reduce + update_peak(
            dp, last_layer_backward_bytes(discriminator, s.discriminator_batch, length, a_d), 0, disc_chunks > 1
        ),
        "student update": resident + student_reduce + update_peak(
            st,
            last_layer_backward_bytes(student, s.per_device_train_batch_size, length, a_s),
            int(st.gradients * head_share),
            s.gradient_accumulation_steps > 1,
        ),
        "reference forward": resident + ref.activations,
        # The optimizer steps: gradients still alive, plus the kernel's temporaries (`adamw_step_bytes`); sharded
        # weights are resharded by then (no gathered copies).
        "discriminator optimizer step": stepping + dp.gradients + adamw_step_bytes(
            dp, "adamw_torch", s.device, largest_moment(discriminator, dp, Pd)),
        "student optimizer step": stepping + st.gradients + adamw_step_bytes(
            st, s.optim, s.device, largest_moment(student, st, P)),
    }
    kv = 0
    if not s.use_vllm:
        kv = s.generation_batch * length * student.num_layers * 2 * student.kv_width * a_s
        gathered = 2 * P if mode in ("sharded", "sharded_student") and n > 1 else 0  # ds3_gather_for_generation
        phases["generation (no vLLM)"] = resident + kv + gathered
    return ModeEstimate(mode, n, st, ref, dp, extras, phases, kv)


# ---------------------------------------------------------------------------------------------------------- report
def gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def format_estimate(est: ModeEstimate, gpu_memory_gb: float | None = None) -> str:
    rows = [f"{'':<14}{'weights':>9}{'grads':>9}{'optim':>9}{'activ':>9}  (GiB per GPU)"]
    for label, part in (("student", est.student), ("reference", est.reference), ("discriminator", est.discriminator)):
        rows.append(
            f"{label:<14}{gib(part.weights):>9}{gib(part.gradients):>9}{gib(part.optimizer):>9}{gib(part.activations):>9}"
            f"  {part.note}"
        )
    for label, value in est.extras.items():
        rows.append(f"{'+ ' + label:<40} {gib(value)}")
    if est.generation_kv_cache:
        rows.append(f"{'+ KV cache of in-place generation':<40} {gib(est.generation_kv_cache)} (phase only)")
    fits = ""
    if gpu_memory_gb:
        verdict = "fits" if est.peak <= gpu_memory_gb * 1e9 * 0.9 else "does NOT fit"
        fits = f" -> {verdict} in {gpu_memory_gb:g} GB with 10% headroom"
    rows.append(f"peak per GPU: {gib(est.peak)} GiB during the {est.peak_phase}{fits}")
    return "\n".join(f"  {row}" for row in rows)


def estimate_modes(student: ModelShape, discriminator: ModelShape, settings: RunSettings, modes) -> dict:
    """`{mode: ModeEstimate, or the reason it does not apply}` (a sharded mode on one GPU, LoRA modes without peft, a
    shared base with a discriminator of another model)."""
    out = {}
    for m in modes:
        if m in SHARDED_MODES and settings.num_gpus < 2:
            out[m] = "1 GPU"
        elif m in PEFT_MODES and student.lora_params is None:
            out[m] = "needs peft"
        elif m.startswith("shared_base") and discriminator.name != student.name:
            out[m] = "separate discriminator model"
        else:
            out[m] = estimate(student, discriminator, settings, m)
    return out


def format_report(
    student: ModelShape, discriminator: ModelShape, settings: RunSettings, estimates: dict, gpu_memory_gb=None,
    mode_notes: dict[str, str] | None = None,
) -> str:
    """The text report; `mode_notes` adds a line under a mode's header (e.g. the mode a recipe trains in)."""
    s = settings
    lines = [
        f"Student {student.name}: {student.causal_lm_params / 1e9:.3f}B parameters (config: {student.config_source})",
    ]
    if discriminator.name != student.name:
        lines.append(f"Discriminator {discriminator.name}: {discriminator.discriminator_params / 1e9:.3f}B parameters")
    else:
        lines.append(
            f"Discriminator (student's backbone + value head): {discriminator.discriminator_params / 1e9:.3f}B parameters"
        )
    if student.lora_params is not None:
        lines.append(f"LoRA adapter: {student.lora_params / 1e6:.2f}M parameters on {', '.join(student.lora_target_modules)}")
    if discriminator.lora_params is not None and discriminator is not student:
        lines.append(
            f"Discriminator LoRA adapter: {discriminator.lora_params / 1e6:.2f}M parameters on "
            f"{', '.join(discriminator.lora_target_modules)}"
        )
    lines.append(
        f"Batch per GPU: student {s.per_device_train_batch_size} x {s.sequence_length} tokens "
        f"({s.prompt_length} prompt + {s.max_completion_length} completion), discriminator {s.discriminator_batch} "
        f"sequences per forward (generation batch {s.generation_batch} + teachers); gradient checkpointing: student "
        f"{s.gradient_checkpointing}, discriminator {s.discriminator_checkpointing}; compute "
        f"{'bf16' if s.bf16 else 'float32'}; {s.num_gpus} GPU(s)"
    )
    if s.async_generation:
        lines.append(
            f"async_generation: one generation batch ({s.generation_batch * s.num_gpus} completions) held in host "
            f"memory by the main process while the next step trains: about {s.held_batch_bytes / 2**20:.1f} MiB "
            "(not GPU memory: the completions become tensors when their step starts)"
        )
    for mode, est in estimates.items():
        lines.append("")
        lines.append(f"[{mode}] {MODES[mode]}")
        if mode_notes and mode in mode_notes:
            lines.append(f"  <- {mode_notes[mode]}")
        lines.append(format_estimate(est, gpu_memory_gb) if not isinstance(est, str) else f"  n/a ({est})")
    lines.append("")
    lines.append("Assumptions:")
    lines.extend(f"  - {a}" for a in ASSUMPTIONS)
    return "\n".join(lines)
