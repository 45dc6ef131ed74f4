"""Task instances and their rewards (`pytest tests/roll/test_roll_tasks.py tests/roll/test_suite.py`).

`TaskSpec` is the task instance every source produces (generated families, our folders, Terminal-Bench and
Harbor importers); `suite` generates the families of the task suite (`generate`, `generate_suite`,
`SUITE_FAMILIES`). `TaskInstance`, `FAMILIES` and `make_tasks` are the walking skeleton's word tasks, kept
until `roll train` runs on the suite.
"""

from roll.tasks.instance import TaskInstance
from roll.tasks.spec import Environment, TaskSpec
from roll.tasks.suite import FAMILIES as SUITE_FAMILIES
from roll.tasks.suite import FamilyInfo, SuiteError, generate, generate_suite, split_of
from roll.tasks.words import FAMILIES, make_tasks

__all__ = [
    "FAMILIES",
    "SUITE_FAMILIES",
    "Environment",
    "FamilyInfo",
    "SuiteError",
    "TaskInstance",
    "TaskSpec",
    "generate",
    "generate_suite",
    "make_tasks",
    "split_of",
]
