"""Train ROME's byte-level BPE tokenizer: `rome init` calls `train_tokenizer` on its corpus.

Byte-level, so any text (code, paths, JSON, non-English) round-trips exactly. The chat markers are
whole tokens; `<tool_call>` and friends are added as *non-special* tokens so that they survive
`skip_special_tokens` decoding and the tool-call parsers (ours, vLLM's hermes) see them.
"""

from __future__ import annotations

from collections.abc import Iterable

from rome.tokenizer.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END, IM_START

SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<tools>", "</tools>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A transformers fast tokenizer with at most vocab_size tokens (specials included) and our chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(MARKUP_TOKENS),
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 30,
        clean_up_tokenization_spaces=False,
    )
