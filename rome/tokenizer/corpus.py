"""The built-in agentic text corpus that `rome init` trains the tokenizer on when no files are given.

Deterministic from a seed, no downloads: English prose from a word list, shell commands, JSON tool
calls, file contents, and whole chat-formatted agent turns, so that the merges the BPE learns are
the ones an agent's trajectories are made of.
"""

from __future__ import annotations

import json
import random

WORDS = (
    "the a an and or not to of in on at for with from by as is are was were be been it this that "
    "these those file files directory folder path name content line lines text word words number "
    "create write read list show find search replace run execute command shell script test tests "
    "task tasks check result output error errors fail failed pass passed success done finish "
    "please can you I we will should must need want make made change edit add remove delete move "
    "copy open close save load print return value values string strings list dict key keys data "
    "user assistant system tool tools call calls function arguments json python bash program code "
    "first then next last new old current working here there all each every some one two three "
    "hello world example sample input config settings version update install package module import "
    "count sort unique lines contains given following exists empty size time date report summary "
    "answer question because so if else when while until after before into out up down over under"
).split()

NAMES = "main utils app data notes report config test server client hello readme log output input".split()
EXTS = "py txt md json yaml sh csv log cfg toml".split()
DIRS = "/app /tmp /work /home/user /srv/data /var/log src tests docs".split()

TOOLS = [
    {
        "name": "run_shell_command",
        "description": "Run a bash command and return its output.",
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "string", "description": "the command"}},
            "required": ["command"],
        },
    },
    {
        "name": "read_file",
        "description": "Read a text file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
    {
        "name": "write_file",
        "description": "Write content to a file, creating it if needed.",
        "parameters": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "list_directory",
        "description": "List the entries of a directory.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
]


def _sentence(rng: random.Random, lo: int = 4, hi: int = 16) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "?", "!", ":"])


def _path(rng: random.Random) -> str:
    return f"{rng.choice(DIRS)}/{rng.choice(NAMES)}.{rng.choice(EXTS)}"


def _shell(rng: random.Random) -> str:
    p, q = _path(rng), _path(rng)
    w = rng.choice(WORDS)
    return rng.choice(
        [
            f"ls -la {rng.choice(DIRS)}",
            f"cat {p}",
            f"echo '{w} {rng.choice(WORDS)}' > {p}",
            f"grep -n '{w}' {p}",
            f"wc -l {p}",
            f"mkdir -p {rng.choice(DIRS)}/{rng.choice(NAMES)}",
            f"cp {p} {q}",
            f"mv {p} {q}",
            f"rm -f {p}",
            f"sort {p} | uniq -c | sort -rn | head -n {rng.randint(1, 20)}",
            f"find {rng.choice(DIRS)} -name '*.{rng.choice(EXTS)}'",
            f"python3 -c 'print({rng.randint(0, 999)} + {rng.randint(0, 999)})'",
            f"sed -i 's/{w}/{rng.choice(WORDS)}/g' {p}",
            f"cd {rng.choice(DIRS)} && pwd",
            f"test -f {p} && echo yes || echo no",
            f"python3 -m pytest -q {rng.choice(DIRS)}",
        ]
    )


def _file_content(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        name = rng.choice(WORDS)
        return f"def {name}(x):\n    return x + {rng.randint(0, 99)}\n\n\nprint({name}({rng.randint(0, 9)}))\n"
    if kind == 1:
        return json.dumps({rng.choice(WORDS): rng.choice([rng.randint(0, 999), rng.choice(WORDS), True, None])})
    if kind == 2:
        return "\n".join(_sentence(rng) for _ in range(rng.randint(1, 4))) + "\n"
    return "\n".join(f"{rng.choice(WORDS)},{rng.randint(0, 999)}" for _ in range(rng.randint(2, 6))) + "\n"


def _tool_call(rng: random.Random) -> dict:
    kind = rng.randrange(4)
    if kind == 0:
        return {"name": "run_shell_command", "arguments": {"command": _shell(rng)}}
    if kind == 1:
        return {"name": "read_file", "arguments": {"path": _path(rng)}}
    if kind == 2:
        return {"name": "write_file", "arguments": {"path": _path(rng), "content": _file_content(rng)}}
    return {"name": "list_directory", "arguments": {"path": rng.choice(DIRS)}}


def _conversation(rng: random.Random) -> list[dict]:
    messages = [
        {"role": "system", "content": "You are a helpful terminal agent. " + _sentence(rng)},
        {"role": "user", "content": _sentence(rng, 6, 20)},
    ]
    for _ in range(rng.randint(1, 3)):
        call = _tool_call(rng)
        messages.append({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]})
        messages.append({"role": "tool", "content": _file_content(rng)})
    messages.append({"role": "assistant", "content": _sentence(rng)})
    return messages


def agentic_corpus(seed: int = 0, n_docs: int = 3000) -> list[str]:
    """n_docs short documents mixing prose, shell, JSON tool calls, files and rendered chats."""
    from rome.tokenizer.chat import render_messages

    rng = random.Random(seed)
    docs: list[str] = []
    for _ in range(n_docs):
        kind = rng.randrange(5)
        if kind == 0:
            docs.append(" ".join(_sentence(rng) for _ in range(rng.randint(1, 5))))
        elif kind == 1:
            docs.append("\n".join("$ " + _shell(rng) for _ in range(rng.randint(1, 5))))
        elif kind == 2:
            docs.append(json.dumps(_tool_call(rng)))
        elif kind == 3:
            docs.append(_file_content(rng))
        else:
            docs.append(render_messages(_conversation(rng), tools=TOOLS if rng.random() < 0.5 else None))
    return docs
