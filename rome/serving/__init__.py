"""OpenAI-compatible serving of ROME: `rome serve --model DIR [--engine vllm|hf]`.

engine.py is the small ABC the engines implement (vllm_engine.py, hf_engine.py, imported lazily);
service.py turns OpenAI requests into engine calls and back; server.py is the FastAPI app,
the CLI entry and `start_server` (a server in a background thread, for roll's Ray actors).
"""
