"""The copy probe: `copy_probe(model_dir, families)`; tests: `.venv/bin/pytest tests/roll/test_stages.py -k probe`.

CPT never shows the model the agent's full prompt, so `roll eval` after CPT says little; what CPT is for is the
skill the full prompt then needs: reading a held-out task and writing its own words (paths, contents) into the
right tool call. The probe measures exactly that, cheaply and without sandboxes: for held-out instances of the
training families (seeds 1000.., words from the held-out half of the vocabulary) the prompt is the instruction
alone, as CPT's `task_call` examples render it, and the target is the first call of the task's golden solution
(`roll.data.teacher.act_steps`) in ROME's tool-call format. A case passes when every target token is the
model's argmax given the ones before it: exactly the reply greedy decoding would produce.
"""

from __future__ import annotations

from pathlib import Path

import torch


def probe_cases(families: list[str], per_family: int, tokenizer) -> list[tuple[str, list[int], list[int], str]]:
    """(family, prompt ids, target ids, instruction) for held-out seeds 1000.. of each family."""
    from roll.sft.cpt import golden_first_call
    from roll.sft.render import encode, prompt_text, response_text
    from roll.tasks.suite import FAMILIES, HELDOUT_SEED, generate

    cases = []
    for family in families:
        if FAMILIES[family].heldout_only:
            continue
        for i in range(per_family):
            task = generate(family, HELDOUT_SEED + i)
            reply = {"role": "assistant", "content": "", "tool_calls": golden_first_call(task)}
            prompt = encode(prompt_text([{"role": "user", "content": task.instruction}], None, tokenizer), tokenizer)
            cases.append((family, prompt, encode(response_text(reply, tokenizer), tokenizer), task.instruction))
    return cases


@torch.no_grad()
def copy_probe(model_dir: str | Path, families: list[str], per_family: int = 16, batch: int = 32) -> dict:
    """Held-out exact first-call rate by family and overall (percent), with the number of cases, and each miss:
    the instruction, the reply up to its first wrong token (`wrote`, greedy) and the token it should have been
    (`wanted`). Issue 12's misses were nearly all at one word's first piece (`newt` -> `w`, `ivory` -> ` f`)."""
    from transformers import AutoModelForCausalLM

    from roll.sft.render import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    cases = probe_cases(families, per_family, tokenizer)
    hits: dict[str, list[bool]] = {}
    misses: list[dict] = []
    for k in range(0, len(cases), batch):
        part = cases[k : k + batch]
        length = max(len(p) + len(r) for _, p, r, _ in part)
        ids = torch.zeros(len(part), length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (_, p, r, _) in enumerate(part):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, : len(p) + len(r)] = 1
            labels[i, len(p) : len(p) + len(r)] = torch.tensor(r)
        predicted = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        ok = ((predicted == target) | (target == -100)).all(-1)
        for i, ((family, p, r, instruction), o) in enumerate(zip(part, ok.tolist(), strict=True)):
            hits.setdefault(family, []).append(bool(o))
            if not o:
                got = predicted[i, len(p) - 1 : len(p) - 1 + len(r)].tolist()
                at = next(j for j, (a, b) in enumerate(zip(got, r, strict=True)) if a != b)
                misses.append({
                    "family": family,
                    "instruction": instruction,
                    "wrote": tokenizer.decode(r[:at] + [got[at]]),
                    "wanted": tokenizer.decode([r[at]]),
                })  # fmt: skip
    total = [h for v in hits.values() for h in v]
    return {
        "what": "held-out task alone -> the golden first call, greedy exact match (roll/stages/probe.py)",
        "cases": len(total),
        "overall": round(100 * sum(total) / max(1, len(total)), 1),
        "by_family": {f: round(100 * sum(v) / len(v), 1) for f, v in hits.items()},
        "misses": misses,
    }
