"""A value-head discriminator for decoders that have no `*ForSequenceClassification` class (Cohere2, GLM4-MoE,
NemotronH, ... in transformers 5.17): the architecture's `AutoModel` body plus a bias-free one-output `score` head.

`GADValueHeadModel` is transformers' own sequence-classification model (`GenericForSequenceClassification`: same
layout `model.*` + `score.weight`, same forward and last-non-pad-token pooling, as `Qwen2ForSequenceClassification`)
built on whatever `AutoModel` the config maps to, so everything in GAD that reads `model.model` / `model.score`
(scoring, LoRA / QLoRA through PEFT `SEQ_CLS`, FSDP2, the shared base) works on it unchanged. Its saved config
records `architectures=["GADValueHeadModel"]` and `gad_value_head=True`; `load_value_model` reads that marker to reload
a saved folder with this class (safetensors weights, as every transformers model).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, PreTrainedModel
from transformers.modeling_layers import GenericForSequenceClassification

VALUE_HEAD_MARKER = "gad_value_head"  # config key of a saved GADValueHeadModel
# Class-level capabilities that PreTrainedModel checks on the instance at __init__ (attention implementation) or later
# (gradient checkpointing, compile): taken from the body's class so the fallback behaves as the body does.
_BODY_FLAGS = (
    "_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn", "_supports_attention_backend",
    "_compatible_flash_implementations", "_can_compile_fullgraph", "supports_gradient_checkpointing", "_is_stateful",
)  # fmt: skip
# from_pretrained arguments that locate the checkpoint (the config is read with them before choosing the class).
_HUB_KWARGS = (
    "trust_remote_code", "revision", "cache_dir", "token", "local_files_only", "subfolder", "force_download", "proxies",
    "code_revision",
)  # fmt: skip


def has_sequence_classification(config) -> bool:
    """Whether transformers has a `*ForSequenceClassification` class for this config (in the library or as remote
    code). Module-level so tests can force the fallback on an architecture that has one."""
    auto_map = getattr(config, "auto_map", None) or {}
    return type(config) in AutoModelForSequenceClassification._model_mapping or (
        AutoModelForSequenceClassification.__name__ in auto_map
    )


def uses_value_head(config) -> bool:
    """Whether a discriminator with this config is (or must be built as) a `GADValueHeadModel`: a folder saved as one,
    or an architecture without a sequence-classification class."""
    return bool(getattr(config, VALUE_HEAD_MARKER, False)) or not has_sequence_classification(config)


def _body_class(config):
    mapping = AutoModel._model_mapping
    if type(config) not in mapping:
        raise ValueError(
            f"The discriminator cannot be built for model_type={config.model_type!r}: transformers has neither an "
            "AutoModelForSequenceClassification nor an AutoModel class for it (remote-code architectures without a "
            "sequence-classification class are not supported). Pass a ready discriminator model to GADTrainer instead."
        )
    body = mapping[type(config)]
    return body[0] if isinstance(body, (list, tuple)) else body  # a few model types map to several bodies


class GADValueHeadModel(GenericForSequenceClassification, PreTrainedModel):
    """`AutoModel` body (`self.model`, last hidden state) + bias-free `score` head with `config.num_labels` (1) outputs;
    forward returns `SequenceClassifierOutputWithPast` pooled at the last non-pad token, as transformers'
    `*ForSequenceClassification`. Works with any config `AutoModel` knows (`config_class = AutoConfig`)."""

    config_class = AutoConfig  # any architecture: from_pretrained reads config.json through AutoConfig
    base_model_prefix = "model"  # read by gad_trl.discriminator.model.backbone; the weights are `model.*` + `score.*`

    def __init__(self, config):
        body = _body_class(config)
        for flag in _BODY_FLAGS:  # before PreTrainedModel.__init__, which checks the attention implementation with them
            object.__setattr__(self, flag, getattr(body, flag, getattr(PreTrainedModel, flag, None)))
        super().__init__(config)  # GenericForSequenceClassification: self.model = AutoModel.from_config, self.score
        # Written to config.json (save_pretrained sets architectures too): a saved folder reloads with this class.
        setattr(self.config, VALUE_HEAD_MARKER, True)
        self.config.architectures = [type(self).__name__]
        self.loss_type = "ForSequenceClassification"  # the class name does not tell transformers' loss mapping


def check_pad_token_id(config, where: str) -> None:
    """A `pad_token_id` outside the vocabulary is an error naming the field and the fix (the embedding layer would
    refuse it as its padding index with a bare AssertionError)."""
    text = config.get_text_config()
    for cfg in [config] if text is config else [config, text]:  # the top level and the text model
        pad, vocab = getattr(cfg, "pad_token_id", None), getattr(cfg, "vocab_size", None)
        if isinstance(pad, int) and isinstance(vocab, int) and not -vocab <= pad < vocab:
            raise ValueError(
                f"{where}: pad_token_id={pad} is outside the vocabulary (vocab_size={vocab}), so the embedding layer "
                f"cannot use it as its padding index. Set pad_token_id to a token id below {vocab} (the tokenizer's "
                "pad or EOS id: tokenizer.pad_token_id) or to null in that config.json, or pass the discriminator as "
                "a model whose config.pad_token_id you fixed."
            )


def load_value_model(path: str, **kwargs) -> PreTrainedModel:
    """`AutoModelForSequenceClassification.from_pretrained(path, **kwargs)`, or `GADValueHeadModel.from_pretrained`
    for a saved value-head folder or an architecture without a sequence-classification class (a causal LM checkpoint
    then gives the body; the head is new)."""
    config = AutoConfig.from_pretrained(path, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    check_pad_token_id(config, f"{path}/config.json")
    model_class = GADValueHeadModel if uses_value_head(config) else AutoModelForSequenceClassification
    return model_class.from_pretrained(path, **kwargs)


def value_model_from_config(config, **kwargs) -> PreTrainedModel:
    """A new discriminator for `config` (randomly initialised): `AutoModelForSequenceClassification.from_config`, or a
    `GADValueHeadModel` for an architecture without a sequence-classification class."""
    check_pad_token_id(config, "the discriminator's config")
    if uses_value_head(config):
        return GADValueHeadModel._from_config(config, **kwargs)
    return AutoModelForSequenceClassification.from_config(config, **kwargs)
