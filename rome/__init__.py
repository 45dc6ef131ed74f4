"""ROME, the model: configs, tokenizer and chat template, HF checkpoints, OpenAI-compatible serving.

`rome --help` lists the commands (info, init, serve, convert).
"""
