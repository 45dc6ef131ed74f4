"""Evaluation: `roll eval` runs an agent (iflow, oracle, noop) on tasks and reports pass rates by family and split."""

from roll.eval.results import AttemptRecord, EvalReport
from roll.eval.runner import evaluate

__all__ = ["AttemptRecord", "EvalReport", "evaluate"]
