"""Sandbox backends: the Docker daemon of this machine (docker.py) and its exec/session machinery."""
