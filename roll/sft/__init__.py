"""Supervised data for CPT and SFT (`.venv/bin/pytest tests/roll/test_sft_data.py tests/roll/test_render.py`).

`render` re-renders any teacher's recorded chunks as ROME sees and emits them; `data` reads synthesised
trajectories; the CPT and SFT sequence builders, masks and the adaptive sampler build on them.
"""

from roll.sft.data import DataError, NoVerifiedDataError, load_trajectories
from roll.sft.render import RenderError, render_chunk, render_trajectory

__all__ = [
    "DataError",
    "NoVerifiedDataError",
    "RenderError",
    "load_trajectories",
    "render_chunk",
    "render_trajectory",
]
