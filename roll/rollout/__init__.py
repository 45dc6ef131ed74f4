"""Rollouts: the real iflow agent on task instances inside ROCK sandboxes (`roll train CONFIG` runs them)."""

from roll.rollout.sandbox import Attempt, SandboxTracker, Trajectory, run_attempts

__all__ = ["Attempt", "SandboxTracker", "Trajectory", "run_attempts"]
