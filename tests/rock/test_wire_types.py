"""Wrong-typed fields in every request body of ROCK REST v1 are a ValidationError (422), never a TypeError (5xx).

    .venv/bin/pytest tests/rock/test_wire_types.py -q

No server needed: the wire models alone decide it, and a `mode="before"` validator that assumes
a type is exactly what turns `{"memory": {}}` into a 502.
"""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from rock.models import CreateSandbox, CreateSession, ExecRequest, Mount, SessionRun

WRONG = [{}, [], {"a": 1}, [1, 2], True, 1.5, -1, "", "x", None]
MINIMAL: dict[type[BaseModel], dict] = {
    CreateSandbox: {},
    CreateSession: {},
    ExecRequest: {"cmd": "true"},
    SessionRun: {"cmd": "true"},
    Mount: {"source": "/a", "target": "/b"},
}


@pytest.mark.parametrize(
    "model,field,value",
    [(m, f, v) for m in MINIMAL for f in m.model_fields for v in WRONG],
    ids=lambda x: x.__name__ if isinstance(x, type) else repr(x),
)
def test_wrong_typed_field_is_a_validation_error(model, field, value):
    body = {**MINIMAL[model], field: value}
    try:
        model.model_validate(body)
    except ValidationError:
        pass  # 422, as it should be; any other exception fails the test


@pytest.mark.parametrize("value", [{}, [], 1.5, True, "lots"])
def test_memory_of_wrong_type_names_the_field(value):
    with pytest.raises(ValidationError, match="memory"):
        CreateSandbox.model_validate({"memory": value})


def test_memory_integral_float_is_bytes():
    assert CreateSandbox.model_validate({"memory": 1073741824.0}).memory == 1 << 30


@pytest.mark.parametrize(
    "body",
    [{"memory": 1}, {"memory": "5m"}, {"cpus": 0.001}, {"image": ""}, {"env": {"": "x"}}, {"env": {"A=B": "x"}}],
)
def test_what_the_daemon_would_refuse_is_a_validation_error(body):
    with pytest.raises(ValidationError):
        CreateSandbox.model_validate(body)


@pytest.mark.parametrize("body", [{"cmd": ["a\x00b"]}, {"cmd": "a\x00b"}, {"cmd": "x", "env": {"A": "\x00"}}])
def test_nul_in_what_becomes_argv_or_environment_is_a_validation_error(body):
    with pytest.raises(ValidationError):
        ExecRequest.model_validate(body)
