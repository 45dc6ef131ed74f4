"""The supervised stages: `roll cpt CONFIG` and `roll sft CONFIG` (`.venv/bin/pytest tests/roll/test_stages.py`).

`config.py` the validated stage configs, `data.py` the synthesised dataset reused by its inputs' hash,
`heldout.py` held-out pass rates with the real iflow agent on rome serve, `run.py` the stages themselves.
"""

from roll.stages.config import CptConfig, SftConfig
from roll.stages.run import run_cpt, run_sft

__all__ = ["CptConfig", "SftConfig", "run_cpt", "run_sft"]
