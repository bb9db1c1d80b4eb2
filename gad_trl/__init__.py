"""gad_trl: Generative Adversarial Distillation (arXiv 2511.10643) on TRL's GRPOTrainer."""

__version__ = "0.1.0"

from .config import GADConfig
from .losses import LOSS_TYPES, discriminator_loss

__all__ = ["GADConfig", "GADTrainer", "LOSS_TYPES", "discriminator_loss", "__version__"]


def __getattr__(name):
    # The trainer pulls in TRL's GRPOTrainer (and through it accelerate/transformers' Trainer): import it lazily so
    # `import gad_trl` stays cheap for the CLI's --help and the loss utilities.
    if name == "GADTrainer":
        from .trainer import GADTrainer

        return GADTrainer
    raise AttributeError(f"module 'gad_trl' has no attribute {name!r}")
