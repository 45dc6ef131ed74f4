"""Model backends of iflow, chosen by the `modelProvider` setting: `openai` (any OpenAI-compatible
endpoint) or `scripted` (the shipped test server playing `scriptFile`, started in-process).
"""

from __future__ import annotations

from collections.abc import Callable

from iflow_cli.config import ConfigError, Settings
from iflow_cli.models.openai_api import Completion, ModelError, OpenAIModel

__all__ = ["Completion", "ModelError", "OpenAIModel", "get_model"]


def get_model(settings: Settings, log: Callable[[str], None]) -> OpenAIModel:
    """The configured model client; the scripted provider starts its server first (stopped at exit)."""
    base_url = settings.base_url
    if settings.model_provider == "scripted":
        # Imported lazily: only this provider needs the server code.
        from iflow_cli.testing.scripted_server import ScriptedServer, load_script

        try:
            script = load_script(settings.script_file)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"scriptFile {settings.script_file}: {e}") from e
        server = ScriptedServer(script).start()
        base_url = server.url
    return OpenAIModel(
        base_url,
        api_key=settings.api_key,
        model=settings.model_name,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        timeout=settings.request_timeout,
        stream=settings.stream,
        max_retries=settings.max_retries,
        retry_delay=settings.retry_delay,
        log=log,
    )
