"""Task instances and their rewards (`pytest tests/roll/test_roll_tasks.py`).

`TaskInstance` keeps the fields of a Terminal-Bench task folder (instruction, setup, tests, solution,
plus our family and split); `words` generates the tiny word-built families of the walking skeleton.
"""

from roll.tasks.instance import TaskInstance
from roll.tasks.words import FAMILIES, make_tasks

__all__ = ["FAMILIES", "TaskInstance", "make_tasks"]
