"""Task instances: the one model, the generated suite, and the folder formats (`pytest tests/roll/test_suite.py`).

`TaskSpec` is the task instance every source produces (generated families, our folders, Terminal-Bench and
Harbor importers: `roll.tasks.loader`); `suite` generates the families of the task suite (`generate`,
`generate_suite`, `FAMILIES`).
"""

from roll.tasks.spec import Environment, TaskSpec
from roll.tasks.suite import FAMILIES, FamilyInfo, SuiteError, generate, generate_suite, split_of

__all__ = [
    "FAMILIES",
    "Environment",
    "FamilyInfo",
    "SuiteError",
    "TaskSpec",
    "generate",
    "generate_suite",
    "split_of",
]
