"""The offline rule: imported tasks must build and test with no network (`pytest tests/roll/test_task_formats.py`).

Terminal-Bench and Harbor tasks install their test tools from the internet (`apt-get install curl`,
`curl https://astral.sh/uv/install.sh | sh`, `uv venv`, `uvx -w pytest==8.4.1 pytest ...`). Sandboxes and
image builds here have no network, and the base image already carries pytest, so at import time:

1. In run-tests.sh / test.sh and in a Dockerfile's shell-form RUN steps, every command that fetches from the
   internet is dropped: `apt-get`/`apt` update|install|upgrade, `apk add`, `yum`/`dnf install`, `pip install`
   (pip, pip3, `python -m pip`, `uv pip`), `python -m ensurepip`, `uv venv|sync|add|python install`,
   `pipx install`, `npm install|ci`, `curl ... | sh` (or bash), `wget` of a non-loopback URL, and sourcing
   `$HOME/.local/bin/env` or a venv's `bin/activate` (the venv was never made). A command whose every part is
   dropped is commented out line by line with the marker `# [ale:offline]` (in a script its first line becomes
   `true  # [ale:offline] ...`, so that an `if`/`then` body stays valid bash); a `&&`/`;` chain that also does
   other work keeps that work, each dropped part replaced by `true`, under a comment holding the original.
2. `uv run [opts] pytest`, `uvx [opts] pytest` and `python -m pytest` become `python3 -m pytest` (the base
   image's pytest; `--ctrf FILE` is dropped because that plugin is not installed); `uv run [opts] python`
   becomes `python3`.
3. A Dockerfile's `FROM` image is mapped through `configs/tasks/images.yaml` (first glob that matches); the
   original stays above it as an `[ale:offline]` comment. Unmapped images are kept, and the build then fails
   with one line naming the image unless it exists locally (rock never pulls).

Heredoc bodies and comment lines are left alone, so the rule is idempotent: rewriting twice changes nothing.
"""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache
from pathlib import Path

import yaml

MARK = "[ale:offline]"
IMAGE_MAP = Path(__file__).resolve().parents[3] / "configs" / "tasks" / "images.yaml"

_PREFIX_WORDS = {"then", "do", "else", "elif", "!", "{", "(", "sudo", "command", "exec", "time"}
_ASSIGN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")
_LOOPBACK = re.compile(r"(localhost|127\.0\.0\.1|\[::1\])")
_PYTEST = re.compile(
    r"(?:\buv\s+run|\buvx)(?:\s+-{1,2}[\w-]+(?:=\S+)?(?:\s+(?!pytest(?:\s|$))(?!-)\S+)?)*\s+pytest\b"
    r"|\bpython(?:3)?\s+-m\s+pytest\b"
)
_UV_PYTHON = re.compile(r"\buv\s+run(?:\s+-{1,2}[\w-]+(?:=\S+)?(?:\s+(?!python3?(?:\s|$))(?!-)\S+)?)*\s+python3?\b")
_CTRF = re.compile(r"\s--ctrf(?:=|\s+)\S+")
_HEREDOC = re.compile(r"(?<!<)<<(?!<)-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def _online(words: list[str], text: str) -> bool:
    """Whether one simple command (its words, after keywords and VAR=x prefixes) fetches from the internet."""
    if not words:
        return False
    w0, rest = words[0], words[1:]
    w1 = rest[0] if rest else ""
    if w0 in ("apt-get", "apt") and {"update", "install", "upgrade", "dist-upgrade"} & set(rest):
        return True
    if (w0 == "apk" and w1 in ("add", "update")) or (w0 in ("yum", "dnf") and w1 == "install"):
        return True
    if re.match(r"^pip3?(\.\d+)?$", w0) and w1 == "install":
        return True
    if re.match(r"^python(3(\.\d+)?)?$", w0) and w1 == "-m" and rest[1:2] in (["pip"], ["ensurepip"]):
        return ["pip"] != rest[1:2] or "install" in rest
    if w0 == "uv" and (w1 in ("venv", "sync", "add") or rest[:2] in (["pip", "install"], ["python", "install"])):
        return True
    if (w0 == "pipx" and w1 == "install") or (w0 == "npm" and w1 in ("install", "i", "ci")):
        return True
    if w0 == "curl" and re.search(r"\|\s*(sudo\s+)?(ba|z)?sh\b", text):
        return True
    if w0 == "wget" and not _LOOPBACK.search(text):
        return True
    if w0 in ("source", ".") and w1:
        return w1.endswith("/.local/bin/env") or w1.endswith("/bin/activate")
    return False


def _split_top(cmd: str) -> list[tuple[str, str]]:
    """(operator before it, segment) for the parts of `cmd` joined by && || ; outside quotes and brackets."""
    parts, buf, op, quote, depth, i = [], [], "", "", 0, 0
    while i < len(cmd):
        c = cmd[i]
        if quote:
            if c == "\\" and quote == '"' and i + 1 < len(cmd):
                buf.append(cmd[i : i + 2])
                i += 2
                continue
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or cmd[i - 1].isspace()):
            buf.append(cmd[i:])  # a comment runs to the end: nothing in it is a command
            break
        elif c == "\\" and i + 1 < len(cmd):
            buf.append(cmd[i : i + 2])
            i += 2
            continue
        elif c in "(" or cmd.startswith("$(", i):
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif depth == 0 and (cmd.startswith("&&", i) or cmd.startswith("||", i)):
            parts.append((op, "".join(buf)))
            buf, op, i = [], cmd[i : i + 2], i + 2
            continue
        elif depth == 0 and c == ";" and not cmd.startswith(";;", i):
            parts.append((op, "".join(buf)))
            buf, op, i = [], ";", i + 1
            continue
        buf.append(c)
        i += 1
    parts.append((op, "".join(buf)))
    return parts


def _words(segment: str) -> tuple[list[str], list[str]]:
    """(leading shell keywords and VAR=x assignments, the command's words) of one segment."""
    words = segment.split()
    lead = []
    while words and (words[0] in _PREFIX_WORDS or _ASSIGN.match(words[0])):
        lead.append(words.pop(0))
    return lead, words


def _fix_pytest(segment: str) -> str:
    if not _PYTEST.search(segment) and not _UV_PYTHON.search(segment):
        return segment
    out = _PYTEST.sub("python3 -m pytest", segment)
    out = _UV_PYTHON.sub("python3", out)
    return _CTRF.sub("", out) if "pytest" in out else out


def rewrite_command(cmd: str) -> str | None:
    """The offline form of one logical shell command; None when every part of it is dropped."""
    parts = _split_top(cmd)
    out, dropped = [], 0
    for op, seg in parts:
        lead, words = _words(seg)
        if _online(words, seg):
            dropped += 1
            space = seg[: len(seg) - len(seg.lstrip())]
            seg = space + " ".join([*lead, "true"]) + (" " if seg.endswith(" ") else "")
        else:
            seg = _fix_pytest(seg)
        out.append(op + seg)
    if dropped == len(parts):
        return None
    text = "".join(out)
    while (t := re.sub(r"^(\s*)true\s*(&&|;)\s*", r"\1", text)) != text:
        text = t
    return re.sub(r"(\s*(&&|;)\s*true)+(\s*)$", r"\3", text)


def _logical_lines(text: str) -> list[list[str]]:
    """Physical lines grouped into logical ones: backslash continuations joined, heredoc bodies kept whole."""
    lines, groups, i = text.split("\n"), [], 0
    while i < len(lines):
        group = [lines[i]]
        while group[-1].endswith("\\") and not group[-1].lstrip().startswith("#") and i + 1 < len(lines):
            i += 1
            group.append(lines[i])
        m = _HEREDOC.search(" ".join(group))
        end = _heredoc_end(lines, i + 1, m.group(2)) if m and not group[0].lstrip().startswith("#") else None
        if end is not None:
            groups.append(["\0heredoc", *group, *lines[i + 1 : end + 1]])
            i = end
        else:
            groups.append(group)
        i += 1
    return groups


def _heredoc_end(lines: list[str], start: int, word: str) -> int | None:
    # A `<<` inside a quoted string has no delimiter line after it: then it is no heredoc.
    return next((j for j in range(start, len(lines)) if lines[j].strip() == word), None)


def _joined(group: list[str]) -> str:
    return " ".join(line[:-1].rstrip() if line.endswith("\\") else line for line in group)


def rewrite_script(text: str) -> str:
    """run-tests.sh / test.sh with the offline rule applied (see the module docstring)."""
    out = []
    for group in _logical_lines(text):
        if group[0] == "\0heredoc" or group[0].lstrip().startswith("#") or not _joined(group).strip():
            out.extend(group[1:] if group[0] == "\0heredoc" else group)
            continue
        new = rewrite_command(_joined(group))
        if new is None:
            indent = group[0][: len(group[0]) - len(group[0].lstrip())]
            out.append(f"{indent}true  # {MARK} {group[0].lstrip()}")
            out.extend(f"# {MARK} {line}" for line in group[1:])
        elif new != _joined(group):
            out.extend(f"# {MARK} {line}" for line in group)
            out.append(new)
        else:
            out.extend(group)
    return "\n".join(out)


@lru_cache(maxsize=4)
def load_image_map(path: Path = IMAGE_MAP) -> tuple[tuple[str, str], ...]:
    """(glob, local image) pairs of configs/tasks/images.yaml, in order."""
    data = yaml.safe_load(path.read_text()) or {}
    return tuple((str(e["match"]), str(e["image"])) for e in data.get("map", []))


def map_image(ref: str, image_map: tuple[tuple[str, str], ...] | None = None) -> str | None:
    """The local image that replaces `ref`, or None when no entry matches."""
    for pattern, image in image_map if image_map is not None else load_image_map():
        if fnmatch.fnmatchcase(ref, pattern):
            return image
    return None


_FROM = re.compile(r"^(\s*FROM\s+(?:--\S+\s+)*)(\S+)(.*)$", re.IGNORECASE)
_RUN = re.compile(r"^(\s*RUN\s+)(?!\[)(?!<<)(.*)$", re.IGNORECASE | re.DOTALL)


def rewrite_dockerfile(text: str, image_map: tuple[tuple[str, str], ...] | None = None) -> str:
    """The Dockerfile with its FROM images mapped and its RUN steps made offline."""
    out, stages = [], set()
    for group in _logical_lines(text):
        head = group[0] if group[0] != "\0heredoc" else group[1]
        body = group[1:] if group[0] == "\0heredoc" else group
        from_m, run_m = _FROM.match(head), _RUN.match(_joined(body))
        if from_m and len(body) == 1:
            ref, rest = from_m.group(2), from_m.group(3)
            mapped = None if ref.lower() in stages else map_image(ref, image_map)
            if len(rest.split()) >= 2 and rest.split()[0].lower() == "as":
                stages.add(rest.split()[1].lower())
            if mapped and mapped != ref:
                out += [
                    f"# {MARK} {head.strip()}  (mapped by configs/tasks/images.yaml)",
                    from_m.group(1) + mapped + rest,
                ]
                continue
        elif run_m and group[0] != "\0heredoc" and not head.lstrip().startswith("#"):
            new = rewrite_command(run_m.group(2))
            if new is None:
                out.extend(f"# {MARK} {line}" for line in body)
                continue
            if new != run_m.group(2):
                out.extend(f"# {MARK} {line}" for line in body)
                out.append(run_m.group(1) + new.strip())
                continue
        out.extend(body)
    return "\n".join(out)
