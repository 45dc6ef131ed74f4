"""iflow (no -p): the interactive session. Uses prompt_toolkit and rich when importable, else input()/print.

Every line you type is a new user turn of the same session; shell and write tools ask before
running unless --yolo (or autoEdit for edits). Commands: /help, /clear, /exit.
"""

from __future__ import annotations

import json
import sys

from iflow_cli.cli import build_agent, err, progress

HELP = "Type a task and press Enter. /clear starts a new session, /exit (or Ctrl-D) quits."


def make_input():
    """A line reader: prompt_toolkit's (history, editing) when installed, else input()."""
    try:
        from prompt_toolkit import PromptSession

        session = PromptSession()
        return lambda prompt: session.prompt(prompt)
    except ImportError:
        return input


def make_printer():
    """Final answers rendered as Markdown by rich when installed and on a terminal; else None (we stream)."""
    try:
        from rich.console import Console
        from rich.markdown import Markdown

        if sys.stdout.isatty():
            console = Console()
            return lambda text: console.print(Markdown(text))
    except ImportError:
        pass
    return None


def ask_approval(read):
    def approve(name: str, args: dict) -> bool:
        shown = args.get("command") or args.get("path") or json.dumps(args)[:200]
        try:
            return read(f"Allow {name}: {shown}? [y/N] ").strip().lower() in ("y", "yes")
        except EOFError:
            return False

    return approve


def repl(settings, args, executor, model) -> int:
    read, show = make_input(), make_printer()
    if show is None:  # plain terminal: stream the text as it comes, so nothing looks stuck
        model.stream = True
        model.on_text = lambda piece: print(piece, end="", flush=True)

    def new_agent():
        return build_agent(settings, args, executor, model, ask_approval(read), progress)

    agent = new_agent()
    err(f"iflow: {model.model} at {model.base_url}; working in {executor.cwd}. {HELP}")
    while True:
        try:
            line = read("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line in ("/exit", "/quit"):
            return 0
        if line == "/help" or not line:
            err(HELP)
            continue
        if line == "/clear":
            agent = new_agent()
            continue
        result = agent.run(line)
        if show and result.answer:
            show(result.answer)
        else:
            print()
        if not result.finished:
            err(f"(stopped: {result.termination_reason})")
