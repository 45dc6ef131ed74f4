"""Packing, token-budget micro-batches and sliced logprobs: `.venv/bin/pytest tests/roll/test_algo_packing.py -q`.

The claim that matters: a packed trajectory trains exactly like one row per chunk (same loss, same gradients,
checked to 1e-6 on a tiny causal model), and splitting a step into micro-batches changes nothing either.
"""

import random

import pytest
import torch
from torch import nn

from rock.contracts import Chunk
from roll.algo.ipa import grpo_loss, ipa_loss, ppo_clip_loss
from roll.algo.logprobs import sliced_token_logprobs, token_logprobs
from roll.algo.packing import PackingError, budget_microbatches, pack_trajectory, pad_sequences, untrainable_reason


def chunk(index, prompt, response, logprobs=None, trajectory_id="t"):
    if logprobs is None:
        logprobs = [-0.1 * (i + 1) for i in range(len(response))]
    return Chunk(
        trajectory_id=trajectory_id,
        sandbox_id="s",
        index=index,
        prompt_token_ids=prompt,
        response_token_ids=response,
        response_logprobs=logprobs,
        latency_s=0.0,
        created_at=0.0,
    )


# ---- pack_trajectory ----------------------------------------------------------------------------------------


def three_chunks():
    return [
        chunk(0, [1, 2], [3, 4], [-0.1, -0.2]),
        chunk(1, [1, 2, 3, 4, 5], [6], [-0.3]),  # extends: + tool result 5
        chunk(2, [9, 1], [7, 8], [-0.4, -0.5]),  # history rewritten (compression): a new sequence
    ]


def test_pack_extends_while_prompts_extend_and_restarts_where_history_was_rewritten():
    seqs = pack_trajectory(three_chunks())
    assert len(seqs) == 2
    a, b = seqs
    assert a.input_ids.tolist() == [1, 2, 3, 4, 5, 6]
    # targets 2 3 4 5 6: the loss is on the model's own tokens 3 4 and 6, not on the tool result 5
    assert a.loss_mask.tolist() == [False, True, True, False, True]
    assert a.chunk_ids.tolist() == [-1, 0, 0, -1, 1]
    assert a.old_logprobs.tolist() == pytest.approx([0.0, -0.1, -0.2, 0.0, -0.3])
    assert a.chunk_indices == [0, 1]
    assert b.input_ids.tolist() == [9, 1, 7, 8]
    assert b.loss_mask.tolist() == [False, True, True]
    assert b.chunk_ids.tolist() == [-1, 0, 0]
    assert b.old_logprobs.tolist() == pytest.approx([0.0, -0.4, -0.5])
    assert b.chunk_indices == [2]


def test_pack_sorts_by_index_and_unpacked_gives_one_sequence_per_chunk():
    c = three_chunks()
    shuffled = pack_trajectory([c[2], c[0], c[1]])
    assert [s.input_ids.tolist() for s in shuffled] == [[1, 2, 3, 4, 5, 6], [9, 1, 7, 8]]
    rows = pack_trajectory(c, pack=False)
    assert [s.input_ids.tolist() for s in rows] == [[1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [9, 1, 7, 8]]
    assert rows[1].loss_mask.tolist() == [False, False, False, False, True]
    assert rows[1].chunk_ids.tolist() == [-1, -1, -1, -1, 0]


def test_pack_restarts_when_the_prompt_is_shorter_than_the_sequence_or_differs_in_the_response():
    seqs = pack_trajectory([chunk(0, [1, 2], [3, 4]), chunk(1, [1, 2, 3], [5])])  # prompt shorter than 1 2 3 4
    assert len(seqs) == 2
    # the template re-rendered the answer (4 -> 40): the prompt does not extend what was sampled
    seqs = pack_trajectory([chunk(0, [1, 2], [3, 4]), chunk(1, [1, 2, 3, 40, 5], [6])])
    assert len(seqs) == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (chunk(1, [1], [2], []), "0 response_logprobs for 1 response tokens"),
        (chunk(1, [], [2]), "no prompt_token_ids"),
        (chunk(1, [1], []), "no response_token_ids"),
        (chunk(0, [1], [2]), "index appears twice"),
    ],
)
def test_pack_rejects_untrainable_chunks_naming_trajectory_and_chunk(bad, message):
    with pytest.raises(PackingError, match=f"trajectory t chunk {bad.index}: {message}"):
        pack_trajectory([chunk(0, [1], [2]), bad])


def test_untrainable_chunks_are_named_and_dropping_one_keeps_its_answer_as_context_without_loss():
    # chunk 1 answered 9 but its token ids were lost; chunk 2's prompt carries that answer and a tool result 5
    c = [chunk(0, [1, 2], [3]), chunk(1, [1, 2, 3, 4], [], []), chunk(2, [1, 2, 3, 4, 9, 5], [6])]
    assert [untrainable_reason(x) for x in c] == [None, "no response_token_ids recorded", None]
    (seq,) = pack_trajectory([x for x in c if untrainable_reason(x) is None])
    assert seq.input_ids.tolist() == [1, 2, 3, 4, 9, 5, 6]
    assert seq.chunk_ids.tolist() == [-1, 0, -1, -1, -1, 1]
    assert seq.chunk_indices == [0, 2]


def test_pack_rejects_chunks_of_several_trajectories():
    with pytest.raises(ValueError, match="several trajectories"):
        pack_trajectory([chunk(0, [1], [2], trajectory_id="a"), chunk(1, [1], [2], trajectory_id="b")])


# ---- micro-batches and padding ------------------------------------------------------------------------------


def test_budget_microbatches_by_hand():
    # longest first: 20 alone (over budget), 8 alone (2·8 > 10); then 5 | 3+2+2 (5 + 9 = 14 padded tokens) or
    # 5+3 | 2+2 (10 + 4 = 14) in two micro-batches, or 5 | 3 | 2+2 (12) in three: at 3 tokens a micro-batch the
    # two-way cuts win (14 + 6 < 12 + 9), and of those the one whose last run is longer
    assert budget_microbatches([5, 3, 8, 2, 2, 20], max_tokens=10, overhead=3) == [[5], [2], [0], [1, 3, 4]]
    # no overhead: 5 | 3 | 2+2 (12 tokens) is the cheapest
    assert budget_microbatches([5, 3, 8, 2, 2, 20], max_tokens=10, overhead=0) == [[5], [2], [0], [1], [3, 4]]


def test_budget_microbatches_cut_where_padding_costs_more_than_a_microbatch():
    # one micro-batch would pad the three short sequences to 100: 4·100 + 20 = 420 against 100 + 20 + 3·10 + 20
    assert budget_microbatches([10, 100, 10, 10], max_tokens=1000, overhead=20) == [[1], [0, 2, 3]]
    # nearly equal lengths: one micro-batch (4·12 + 20 = 68) beats a cut (12 + 20 + 3·10 + 20 = 82)
    assert budget_microbatches([10, 12, 10, 10], max_tokens=1000, overhead=20) == [[0, 1, 2, 3]]
    # a long overhead: never cut inside the budget
    assert budget_microbatches([10, 100, 10, 10], max_tokens=1000, overhead=1000) == [[0, 1, 2, 3]]


def _padded_cost(batches, lengths, overhead):
    return sum(overhead + len(b) * max(lengths[i] for i in b) for b in batches)


def test_budget_microbatches_never_cost_more_than_longest_first_greedy_filling():
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(1, 300) for _ in range(rng.randint(1, 40))]
        budget, overhead = rng.randint(300, 4000), rng.randint(0, 200)
        greedy, current = [], []
        for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
            if current and (len(current) + 1) * lengths[current[0]] > budget:
                greedy.append(current)
                current = []
            current.append(i)
        greedy.append(current)
        planned = budget_microbatches(lengths, budget, overhead)
        assert sorted(i for b in planned for i in b) == list(range(len(lengths)))
        assert _padded_cost(planned, lengths, overhead) <= _padded_cost(greedy, lengths, overhead)


def test_budget_microbatches_cover_every_sequence_once_within_budget():
    rng = random.Random(0)
    for _ in range(50):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(0, 30))]
        budget = rng.randint(1, 100)
        batches = budget_microbatches(lengths, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= budget
    with pytest.raises(ValueError, match="max_tokens"):
        budget_microbatches([1], 0)
    with pytest.raises(ValueError, match="overhead"):
        budget_microbatches([1], 10, overhead=-1)


def test_pad_sequences_gives_global_chunk_ids_and_refuses_a_chunk_twice():
    seqs = pack_trajectory(three_chunks()) + pack_trajectory([chunk(0, [4], [5, 6], trajectory_id="u")])
    batch = pad_sequences(seqs, pad_id=0)
    assert batch.chunk_keys == [("t", 0), ("t", 1), ("t", 2), ("u", 0)]
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [9, 1, 7, 8, 0, 0], [4, 5, 6, 0, 0, 0]]
    assert batch.targets.tolist() == [[2, 3, 4, 5, 6], [1, 7, 8, 0, 0], [5, 6, 0, 0, 0]]
    assert batch.chunk_ids.tolist() == [[-1, 0, 0, -1, 1], [-1, 2, 2, -1, -1], [3, 3, -1, -1, -1]]
    assert batch.loss_mask.tolist() == [[0, 1, 1, 0, 1], [0, 1, 1, 0, 0], [1, 1, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]
    with pytest.raises(PackingError, match="in two sequences"):
        pad_sequences(seqs + seqs[:1])


# ---- sliced logprobs ----------------------------------------------------------------------------------------


def test_sliced_logprobs_equal_the_full_computation_with_the_same_gradients():
    torch.manual_seed(0)
    head = nn.Linear(6, 50).double()
    hidden = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (2, 7))
    full = token_logprobs(head(hidden), targets)
    full.sum().backward()
    want_h, want_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    for slice_len in (1, 3, 7, 100):  # uneven, one row, whole batch
        got = sliced_token_logprobs(head, hidden, targets, slice_len)
        assert got.shape == (2, 7)
        torch.testing.assert_close(got, full, rtol=0, atol=1e-6)
        got.sum().backward()
        torch.testing.assert_close(hidden.grad, want_h, rtol=0, atol=1e-6)
        torch.testing.assert_close(head.weight.grad, want_w, rtol=0, atol=1e-6)
        hidden.grad, head.weight.grad = None, None


def _largest_saved_for_backward(fn) -> int:
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return max(sizes)


def test_sliced_logprobs_never_keep_the_whole_logits_for_backward():
    head = nn.Linear(4, 1000)
    hidden = torch.randn(64, 4, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    # the hook does see the [64 × 1000] logits of the plain computation ...
    assert _largest_saved_for_backward(lambda: token_logprobs(head(hidden), targets)) >= 64 * 1000
    # ... and with slices of 8 tokens nothing larger than a hidden slice or the weights is kept
    assert _largest_saved_for_backward(lambda: sliced_token_logprobs(head, hidden, targets, 8)) <= 4 * 1000


def test_sliced_logprobs_reject_bad_input():
    head = nn.Linear(4, 10)
    with pytest.raises(ValueError, match="slice_len"):
        sliced_token_logprobs(head, torch.randn(3, 4), torch.zeros(3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="disagree"):
        sliced_token_logprobs(head, torch.randn(3, 4), torch.zeros(2, dtype=torch.long), 2)


# ---- packed == one row per chunk, on a tiny causal model ----------------------------------------------------


class TinyCausal(nn.Module):
    """Embedding + causal running mean + linear: each position sees exactly its prefix."""

    def __init__(self, vocab=13, width=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab)

    def hidden(self, ids):  # [B, T] -> [B, T, H]
        e = self.emb(ids)
        prefix_mean = e.cumsum(1) / torch.arange(1, ids.shape[1] + 1, dtype=e.dtype).view(1, -1, 1)
        return torch.tanh(self.mix(prefix_mean) + e)


def trajectories(rng):
    """Two trajectories: one of 3 extending chunks then a rewritten history and one more; one of 2 chunks."""

    def toks(n):
        return [rng.randrange(13) for _ in range(n)]

    out = []
    for tid, plan in (("a", [True, True, True, False, True]), ("b", [True, True])):
        chunks, seq = [], []
        for k, extend in enumerate(plan):
            prompt = (seq if extend else toks(2)) + toks(rng.randint(1, 4))
            response = toks(rng.randint(1, 4))
            chunks.append(chunk(k, prompt, response, [0.0] * len(response), trajectory_id=tid))
            seq = prompt + response
        out.append(chunks)
    return out


def logps(model, batch, sliced):
    h = model.hidden(batch.input_ids)[:, :-1]  # [B, T-1, H]: position j predicts target j
    if sliced:
        return sliced_token_logprobs(model.head, h, batch.targets, slice_len=5)
    return token_logprobs(model.head(h), batch.targets)


def test_packed_loss_and_gradients_equal_one_row_per_chunk():
    torch.manual_seed(0)
    rng = random.Random(0)
    model = TinyCausal().double()
    trajs = trajectories(rng)
    packed = [s for t in trajs for s in pack_trajectory(t)]
    rows = [s for t in trajs for s in pack_trajectory(t, pack=False)]
    assert len(packed) == 3 and len(rows) == 7  # a: 2 sequences for 5 chunks, b: 1 for 2
    assert sum(map(len, packed)) < sum(map(len, rows))

    # old logprobs near the model's own so that ratios are non-trivial yet inside the bounds; one chunk far off
    batch_r = pad_sequences(rows)
    with torch.no_grad():
        noise = 0.1 * torch.randn(batch_r.targets.shape, dtype=torch.float64)
        noise[batch_r.chunk_ids == 4] = 3.0  # chunk ("a", 4): train/inference mismatch
        old = (logps(model, batch_r, sliced=False) + noise) * batch_r.loss_mask
    by_key = {}
    for b, row in enumerate(rows):
        L = len(row)
        by_key[(row.trajectory_id, row.chunk_indices[0])] = old[b, : L - 1][row.loss_mask].tolist()
    for s in packed:  # the same per-chunk old logprobs, written into the packed layout
        for cid, index in enumerate(s.chunk_indices):
            s.old_logprobs[s.chunk_ids == cid] = torch.tensor(by_key[(s.trajectory_id, index)], dtype=torch.float32)
    for s in rows:
        s.old_logprobs[s.loss_mask] = torch.tensor(by_key[(s.trajectory_id, s.chunk_indices[0])], dtype=torch.float32)

    rewards = {"a": 1.0, "b": 0.0}

    def per_chunk(keys):
        ret = torch.tensor([0.9 ** (7 - i) * rewards[t] for t, i in keys], dtype=torch.float64)
        adv = torch.tensor([0.5 if rewards[t] else -0.5 for t, _ in keys], dtype=torch.float64)
        pos = torch.tensor([rewards[t] > 0 for t, _ in keys])
        return ret, adv, pos

    def losses_and_grads(seqs, sliced):
        batch = pad_sequences(seqs)
        new = logps(model, batch, sliced)
        old_lp = batch.old_logprobs.double()
        ret, adv, pos = per_chunk(batch.chunk_keys)
        out = {}
        for name, fn in (
            ("ipa", lambda: ipa_loss(new, old_lp, batch.chunk_ids, batch.loss_mask, ret, adv, pos, neg_weight=0.7)),
            ("grpo", lambda: grpo_loss(new, old_lp, batch.chunk_ids, batch.loss_mask, adv)),
            ("ppo", lambda: ppo_clip_loss(new, old_lp, batch.chunk_ids, batch.loss_mask, adv)),
        ):
            loss, metrics = fn()
            grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
            out[name] = (loss.detach(), grads, metrics)
        return out

    want = losses_and_grads(rows, sliced=False)
    got = losses_and_grads(packed, sliced=True)
    assert want["ipa"][2]["mismatch_chunks"] == 1.0 and want["ipa"][2]["pos_chunks"] == 4.0
    for name in ("ipa", "grpo", "ppo"):
        assert want[name][0].abs() > 1e-3  # a real loss, not an identically-zero one
        torch.testing.assert_close(got[name][0], want[name][0], rtol=0, atol=1e-6)
        for g, w in zip(got[name][1], want[name][1], strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
        assert got[name][2] == pytest.approx(want[name][2])


def test_microbatched_step_equals_the_whole_batch():
    torch.manual_seed(1)
    model = TinyCausal().double()
    seqs = [s for t in trajectories(random.Random(1)) for s in pack_trajectory(t)]

    def step_grads(groups, denominator):
        model.zero_grad()
        for group in groups:
            batch = pad_sequences([seqs[i] for i in group])
            new = logps(model, batch, sliced=True)
            C = len(batch.chunk_keys)
            ret, adv = torch.ones(C, dtype=torch.float64), torch.full((C,), -0.5, dtype=torch.float64)
            pos = torch.tensor([t == "a" for t, _ in batch.chunk_keys])
            loss, _ = ipa_loss(
                new, new.detach(), batch.chunk_ids, batch.loss_mask, ret, adv, pos, denominator=denominator
            )
            loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    n_chunks = len(pad_sequences(seqs).chunk_keys)
    whole = step_grads([list(range(len(seqs)))], n_chunks)
    groups = budget_microbatches(seqs, max_tokens=max(map(len, seqs)))
    assert len(groups) > 1
    split = step_grads(groups, n_chunks)
    for g, w in zip(split, whole, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-9)
