"""ROME architecture configs: `rome info rome-30b-a3b` prints their sizes.

The packaged YAML files beside this module (also under configs/model/) are the known configs;
a name resolves to one of them, a directory to the config.json of a saved HF model.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rome.errors import ModelDirError, UnknownConfigError

CONFIG_DIR = Path(__file__).parent


class RomeConfig(BaseModel):
    """One ROME architecture: the Qwen3-MoE layout, every layer sparse."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="registry name, e.g. rome-tiny")
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_hidden_layers: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    intermediate_size: int = Field(gt=0, description="dense MLP width (unused while every layer is MoE)")
    moe_intermediate_size: int = Field(gt=0, description="width of one expert")
    num_experts: int = Field(gt=0)
    num_experts_per_tok: int = Field(gt=0, description="experts routed per token")
    norm_topk_prob: bool = True
    max_position_embeddings: int = Field(gt=0)
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    def to_hf(self, **token_ids: int | None):
        """The transformers Qwen3MoeConfig; token_ids are bos/eos/pad ids from the tokenizer."""
        from transformers import Qwen3MoeConfig

        fields = self.model_dump(exclude={"name", "rope_theta"})
        return Qwen3MoeConfig(
            **fields,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            architectures=["Qwen3MoeForCausalLM"],
            **token_ids,
        )


def known_configs() -> dict[str, Path]:
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def _aliases(name: str) -> list[str]:
    # "tiny", "rome-tiny" and "ROME-30B-A3B" all name the same packaged file.
    n = name.lower()
    return [n, f"rome-{n}"]


def load_config(name: str) -> RomeConfig:
    """A known config by name (`tiny`, `rome-tiny`, `rome-30b-a3b`) or a YAML file path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return RomeConfig.model_validate(yaml.safe_load(path.read_text()))
    known = known_configs()
    for alias in _aliases(name):
        if alias in known:
            return RomeConfig.model_validate(yaml.safe_load(known[alias].read_text()))
    raise UnknownConfigError(f"unknown model config {name!r}; known: {', '.join(known)}")


def hf_config_for(name_or_dir: str):
    """The transformers config of a known name, a YAML file, or a saved HF model dir."""
    path = Path(name_or_dir)
    if path.is_dir():
        from transformers import AutoConfig

        if not (path / "config.json").is_file():
            raise ModelDirError(f"{path}: no config.json (not a saved HF model dir)")
        try:
            return AutoConfig.from_pretrained(path)
        except (ValueError, OSError) as e:
            raise ModelDirError(f"{path}/config.json: cannot be read ({str(e).splitlines()[0]})") from e
    return load_config(name_or_dir).to_hf()
