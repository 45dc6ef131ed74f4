"""python3 -m iflow_cli --help (the settings are listed there): iflow's layered, validated settings.

Layers, later wins: defaults < ~/.iflow/settings.json < ./.iflow/settings.json < IFLOW_* environment
< command-line flags. Keys are iFlow's camelCase names (`baseUrl`, `maxSessionTurns`, ...); an
environment variable may spell a key as IFLOW_maxTokens or IFLOW_MAX_TOKENS. Unknown keys and bad
values are errors that name the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

APPROVAL_MODES = ("default", "autoEdit", "yolo")
TOOL_CALL_MODES = ("native", "text")
PROVIDERS = ("openai", "scripted")


class ConfigError(Exception):
    """A setting is invalid; the message names the key and its source."""


@dataclass
class Settings:
    """Every setting of iflow, with its default. Field names are snake_case, keys in files camelCase."""

    base_url: str = ""  # OpenAI-compatible endpoint ending in /v1; falls back to OPENAI_BASE_URL
    api_key: str = ""  # falls back to OPENAI_API_KEY
    model_name: str = ""  # empty: the first model the server lists
    model_provider: str = "openai"  # "scripted" plays scriptFile on an in-process scripted server
    script_file: str = ""
    max_session_turns: int = 100  # model calls per session
    timeout: float = 0.0  # wall-clock seconds per session, 0 = none
    shell_timeout: float = 120.0  # default seconds per shell command
    request_timeout: float = 300.0  # seconds per model request
    tokens_limit: int = 128000  # context budget in tokens
    compression_token_threshold: float = 0.8  # compress when the context passes this share of tokensLimit
    max_tokens: int = 4096  # per completion
    temperature: float | None = None
    approval_mode: str = "default"  # default: ask (refused in batch); autoEdit: edits allowed; yolo: all
    core_tools: list[str] | None = None  # allowed tools (None: all)
    exclude_tools: list[str] = field(default_factory=list)
    tool_call_mode: str = "native"  # native OpenAI tools, or text <tool_call> blocks in the prompt
    stream: bool = False
    max_retries: int = 3  # model retries on timeouts, 429 and 5xx
    retry_delay: float = 1.0  # first backoff in seconds, doubled each retry
    max_format_errors: int = 3  # consecutive malformed replies before giving up
    tool_output_limit: int = 16000  # characters of one tool output kept (head + tail)
    sandbox: str = ""  # URL#ID of a ROCK sandbox to run tools in; token from ROCK_API_TOKEN

    def check(self, source: str = "settings", only: set[str] | None = None) -> None:
        """Validate ranges and choices (of the keys in `only`, if given), raising ConfigError naming the key."""
        for name, ok, need in self._rules():
            if not ok and (only is None or camel(name) in only):
                raise ConfigError(f"{source}: key '{camel(name)}' {need}, got {getattr(self, name)!r}")

    def _rules(self) -> list[tuple[str, bool, str]]:
        return [
            ("approval_mode", self.approval_mode in APPROVAL_MODES, f"must be one of {', '.join(APPROVAL_MODES)}"),
            ("tool_call_mode", self.tool_call_mode in TOOL_CALL_MODES, "must be native or text"),
            ("model_provider", self.model_provider in PROVIDERS, "must be openai or scripted"),
            ("max_session_turns", self.max_session_turns > 0, "must be > 0"),
            ("tokens_limit", self.tokens_limit >= 256, "must be >= 256"),
            ("compression_token_threshold", 0 < self.compression_token_threshold <= 1, "must be in (0, 1]"),
            ("max_tokens", self.max_tokens > 0, "must be > 0"),
            ("temperature", self.temperature is None or 0 <= self.temperature <= 2, "must be in [0, 2]"),
            ("shell_timeout", self.shell_timeout > 0, "must be > 0"),
            ("request_timeout", self.request_timeout > 0, "must be > 0"),
            ("timeout", self.timeout >= 0, "must be >= 0"),
            ("max_retries", self.max_retries >= 0, "must be >= 0"),
            ("retry_delay", self.retry_delay >= 0, "must be >= 0"),
            ("max_format_errors", self.max_format_errors >= 1, "must be >= 1"),
            ("tool_output_limit", self.tool_output_limit >= 200, "must be >= 200"),
            (
                "script_file",
                self.model_provider != "scripted" or bool(self.script_file),
                "is required by the scripted provider",
            ),
        ]


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


FIELDS = {camel(f.name): f for f in dataclasses.fields(Settings)}


def field_type(f: dataclasses.Field) -> str:
    """The declared annotation as text ('int', 'float | None', ...): `from __future__` keeps them strings."""
    return str(f.type)


def coerce(key: str, value: Any, source: str, from_text: bool = False) -> Any:
    """Check (or, for env/flags, parse) one value against its field's type."""
    f = FIELDS.get(key)
    if f is None:
        raise ConfigError(f"{source}: unknown key '{key}' (known: {', '.join(sorted(FIELDS))})")
    kind = field_type(f)
    try:
        return (parse_text if from_text else check_type)(kind, value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: key '{key}' must be {kind}, got {value!r}") from e


def check_type(kind: str, value: Any) -> Any:
    if value is None and "None" in kind:
        return None
    if kind.startswith("list") and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    if kind.startswith("bool") and isinstance(value, bool):
        return value
    if kind.startswith("int") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind.startswith("float") and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind.startswith("str") and isinstance(value, str):
        return value
    raise TypeError(kind)


def parse_text(kind: str, text: str) -> Any:
    """Environment variables and flags arrive as text; lists are comma separated."""
    if "None" in kind and text.strip().lower() in ("", "none", "null"):
        return None
    if kind.startswith("list"):
        return [t.strip() for t in text.split(",") if t.strip()]
    if kind.startswith("bool"):
        if text.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(text)
        return text.lower() in ("1", "true", "yes", "on")
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


def read_settings_file(path: Path) -> dict:
    """A settings.json as a dict; invalid JSON is reported with the file and line."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"invalid JSON in {path} line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: settings must be a JSON object")
    return data


def env_overrides(env: dict[str, str]) -> dict[str, Any]:
    """IFLOW_<camelKey> or IFLOW_<UPPER_SNAKE>; other IFLOW_* variables are not ours to judge."""
    by_upper = {re.sub(r"([A-Z])", r"_\1", k).upper(): k for k in FIELDS}
    out = {}
    for name, value in env.items():
        if not name.startswith("IFLOW_"):
            continue
        suffix = name[len("IFLOW_") :]
        key = suffix if suffix in FIELDS else by_upper.get(suffix)
        if key:
            out[key] = coerce(key, value, f"environment {name}", from_text=True)
    return out


def settings_paths(home: Path, cwd: Path) -> list[Path]:
    paths = [home / ".iflow" / "settings.json", cwd / ".iflow" / "settings.json"]
    unique = []
    for p in paths:
        if p.is_file() and p.resolve() not in [u.resolve() for u in unique]:
            unique.append(p)
    return unique


def load_settings(
    flags: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    home: Path | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge every layer into a validated Settings. `flags` maps camelCase keys to parsed values."""
    env = dict(os.environ) if env is None else env
    layers = [(str(p), read_settings_file(p), False) for p in settings_paths(home or Path.home(), cwd or Path.cwd())]
    layers.append(("environment", env_overrides(env), True))
    layers.append(("command line", {k: v for k, v in (flags or {}).items() if v is not None}, False))
    merged: dict[str, Any] = {}
    for source, values, parsed in layers:
        layer = values if parsed else {k: coerce(k, v, source) for k, v in values.items()}
        as_settings(layer).check(source, only=set(layer))  # so that a bad value is blamed on its layer
        merged.update(layer)
    settings = as_settings(merged)
    settings.base_url = settings.base_url or env.get("OPENAI_BASE_URL", "")
    settings.api_key = settings.api_key or env.get("OPENAI_API_KEY", "")
    settings.check()
    return settings


def as_settings(values: dict[str, Any]) -> Settings:
    return Settings(**{FIELDS[k].name: v for k, v in values.items()})


def describe_keys() -> str:
    """One line per key with its default, for --help."""
    lines = []
    for key, f in FIELDS.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        lines.append(f"  {key:<28} {field_type(f):<14} default {default!r}")
    return "\n".join(lines)
