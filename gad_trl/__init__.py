"""gad_trl: Generative Adversarial Distillation (arXiv 2511.10643) on TRL's GRPOTrainer."""

from .version import __version__

from .discriminator.losses import LOSS_TYPES, discriminator_loss

__all__ = ["GADConfig", "GADTrainer", "LOSS_TYPES", "discriminator_loss", "__version__"]


def __getattr__(name):
    # GADConfig and GADTrainer pull in TRL (and through it transformers and huggingface_hub, which read HF_* variables
    # at import time): import them lazily so `import gad_trl` stays cheap for the CLI's --help and lets
    # `gad_trl.tiny.use_offline_env()` run before any of them is imported.
    if name == "GADConfig":
        from .config import GADConfig

        return GADConfig
    if name == "GADTrainer":
        from .trainer import GADTrainer

        return GADTrainer
    raise AttributeError(f"module 'gad_trl' has no attribute {name!r}")
