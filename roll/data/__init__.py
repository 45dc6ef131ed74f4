"""Trajectory data: the oracle teacher (`teacher.py`) and synthesis of verified trajectories (`synth.py`,
`roll data synth`)."""
