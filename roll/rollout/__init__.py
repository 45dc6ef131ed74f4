"""Rollouts: one attempt of an agent at a task in a fresh ROCK sandbox (`roll eval`, `roll data synth` and
`roll train` all run `run_attempt`)."""

from roll.rollout.attempt import AGENTS, AgentOptions, SandboxTracker, iflow_source_dir, run_attempt

__all__ = ["AGENTS", "AgentOptions", "SandboxTracker", "iflow_source_dir", "run_attempt"]
