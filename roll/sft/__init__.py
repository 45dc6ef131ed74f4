"""Supervised data for CPT and SFT (`.venv/bin/pytest tests/roll/test_sft_data.py tests/roll/test_render.py`).

`render` re-renders any teacher's recorded chunks as ROME sees and emits them; `data` reads synthesised
trajectories; the CPT and SFT sequence builders, masks and the adaptive sampler build on them.
"""

from roll.sft.cpt import CptData, CptDataConfig, cpt_dataset, cpt_sequences
from roll.sft.data import DataError, NoVerifiedDataError, load_trajectories
from roll.sft.render import RenderError, render_chunk, render_trajectory
from roll.sft.sampler import AdaptiveSampler
from roll.sft.sft import SftData, SftDataConfig, sft_dataset, sft_sequences

__all__ = [
    "AdaptiveSampler",
    "CptData",
    "CptDataConfig",
    "DataError",
    "NoVerifiedDataError",
    "RenderError",
    "SftData",
    "SftDataConfig",
    "cpt_dataset",
    "cpt_sequences",
    "load_trajectories",
    "render_chunk",
    "render_trajectory",
    "sft_dataset",
    "sft_sequences",
]
