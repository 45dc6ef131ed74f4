"""ROLL: reinforcement learning for agents on Ray. `roll train configs/rl/tiny-cpu.yaml` runs the walking skeleton.

Roles: `config` (validated settings), `algo` (pure torch math), `tasks` (task instances and rewards),
`workers` (Ray actors: vLLM inference, DeepSpeed trainer), `rollout` (agents in ROCK sandboxes),
`driver` (the single controller), `cli`.
"""
