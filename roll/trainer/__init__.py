"""Supervised training on DeepSpeed for CPT and SFT (`.venv/bin/pytest tests/roll/test_trainer_sft.py`).

`SupervisedTrainer(model_dir, TrainerConfig(...), out_dir).fit(sequences, steps=N)` trains on
`roll.algo.packing.PackedSequence`s (loss on `loss_mask` targets), `save_hf(dir)` exports the model.
"""

from roll.trainer.config import TrainerConfig, lr_at
from roll.trainer.errors import CheckpointError, DivergedError, NoDataError, TrainerError
from roll.trainer.plots import plot_curves
from roll.trainer.sampler import EpochSampler, Sampler
from roll.trainer.trainer import SupervisedTrainer

__all__ = [
    "CheckpointError",
    "DivergedError",
    "EpochSampler",
    "NoDataError",
    "Sampler",
    "SupervisedTrainer",
    "TrainerConfig",
    "TrainerError",
    "lr_at",
    "plot_curves",
]
