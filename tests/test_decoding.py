"""decode_batch against transformers' generate on the tiny model: greedy, sampled, with groups of rows that
share a prefix and with rows leaving the batch when they end; the prefix plan; teacher forcing through the
same primed cache against a plain forward pass."""

from __future__ import annotations

from typing import Any

import pytest

from llmhalluc import decoding, evaluation
from llmhalluc.decoding import MIN_GROUP_PREFIX, prefix_plan

QUESTIONS = ["Start with 3. Add 4.", "Start with 1. Add 1. Add 1. Add 1. Add 1. What is it?", "Add 9.",
             "Start with 3. Add 5."]


def generate(model: Any, tokenizer: Any, sequences: list[list[int]], *, max_new_tokens: int, sample: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, **extra: Any) -> list[list[int]]:
    """What transformers' generate writes after each left-padded sequence, every decoding knob set."""
    import torch

    stops = evaluation.stop_ids(tokenizer, model.generation_config)
    input_ids, attention = decoding.left_padded(sequences, tokenizer.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention, **decoding.generate_options(
            max_new_tokens=max_new_tokens, stops=stops, pad_id=tokenizer.pad_token_id, sample=sample,
            temperature=temperature, top_p=top_p), **extra)
    return out[:, input_ids.shape[1]:].tolist()


def decode(model: Any, tokenizer: Any, sequences: list[list[int]], **kwargs: Any) -> list[list[int]]:
    stops = evaluation.stop_ids(tokenizer, model.generation_config)
    return decoding.decode_batch(model, sequences, stops=stops, pad_id=tokenizer.pad_token_id, **kwargs).tolist()


def prompts(tokenizer: Any) -> list[list[int]]:
    return [evaluation.prompt_ids(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]


def continued(tokenizer: Any) -> tuple[list[list[int]], list[int]]:
    """Three continuations of each of two problems after its worked steps (the probe's shape): rows that share
    far more than the batch does, and a row that is its group's whole prefix."""
    rows, prefixes = [], []
    for question, steps in (("Start with 3. Add 4.", "Start with 3. Add 4. 3 + 4 = 7. Start with 7."),
                            ("Start with 2. Add 6.", "Start with 2. Add 6. 2 + 6 = 8. Start with 8.")):
        context = evaluation.prompt_ids(tokenizer, [{"role": "user", "content": question}]) + \
            tokenizer.encode(steps, add_special_tokens=False)
        for tail in ("", " Add 1.", " Add 2. 7 + 2"):
            rows.append(context + tokenizer.encode(tail, add_special_tokens=False))
            prefixes.append(len(context))
    return rows, prefixes


def test_greedy_decoding_is_generates(tiny_lm):
    model, tokenizer = tiny_lm
    batch = prompts(tokenizer)
    assert prefix_plan(batch).shared >= 5  # the chat template's opening is read once
    assert decode(model, tokenizer, batch, max_new_tokens=10) == generate(model, tokenizer, batch, max_new_tokens=10)


def test_groups_of_rows_read_their_prefix_once_and_decode_as_generate(tiny_lm):
    model, tokenizer = tiny_lm
    rows, prefixes = continued(tokenizer)
    plan = prefix_plan(rows, prefixes)
    assert len(plan.group_lengths) == 2 and all(length >= MIN_GROUP_PREFIX for length in plan.group_lengths)
    assert all(plan.read_once(r) < len(row) for r, row in enumerate(rows))  # each row reads an id of its own
    assert decode(model, tokenizer, rows, max_new_tokens=12, group_prefix=prefixes) == \
        generate(model, tokenizer, rows, max_new_tokens=12)


def test_a_batch_mixing_grouped_and_lone_rows_decodes_as_generate(tiny_lm):
    model, tokenizer = tiny_lm
    rows, prefixes = continued(tokenizer)
    rows, prefixes = rows + [prompts(tokenizer)[i] for i in (0, 2)], [*prefixes, 0, 0]
    plan = prefix_plan(rows, prefixes)
    assert plan.group_lengths and plan.group_of[-2:] == (-1, -1)
    assert decode(model, tokenizer, rows, max_new_tokens=12, group_prefix=prefixes) == \
        generate(model, tokenizer, rows, max_new_tokens=12)


def test_sampling_draws_what_generate_draws(tiny_lm):
    """Same seed, same samples: the warpers in generate's order, and every row draws at every step."""
    from llmhalluc.rng import seed_everything

    model, tokenizer = tiny_lm
    batch = [p for p in prompts(tokenizer) for _ in range(3)]
    sampling = evaluation.Sampling(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.9)
    seed_everything(5)
    expected = generate(model, tokenizer, batch, max_new_tokens=10, sample=True, temperature=1.5, top_p=0.9)
    seed_everything(5)
    got = decode(model, tokenizer, batch, max_new_tokens=10, sample=True,
                 group_prefix=[len(p) for p in batch], logits_processor=evaluation.sampling_warpers(sampling))
    assert got == expected
    assert len({tuple(r) for r in got}) > 4  # it did sample


class Ends:
    """A stopping criterion that ends row r after r + 1 new tokens."""

    def __init__(self, width: int) -> None:
        self.width = width

    def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
        import torch

        written = input_ids.shape[1] - self.width
        return torch.arange(input_ids.shape[0]) + 1 <= written


class Counting:
    """The model, with the number of rows of each forward pass recorded."""

    def __init__(self, model: Any) -> None:
        self.model, self.rows = model, []

    def __call__(self, **kwargs: Any) -> Any:
        self.rows.append(kwargs["input_ids"].shape[0])
        return self.model(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def test_rows_that_end_leave_the_batch_and_change_nothing(tiny_lm):
    model, tokenizer = tiny_lm
    batch = prompts(tokenizer) * 2
    width = max(len(p) for p in batch)
    counting = Counting(model)
    got = decode(counting, tokenizer, batch, max_new_tokens=12, stopping_criteria=Ends(width))
    expected = generate(model, tokenizer, batch, max_new_tokens=12, stopping_criteria=[Ends(width)])
    assert got == expected
    assert min(counting.rows) < len(batch)  # ended rows were no longer computed
    pad = tokenizer.pad_token_id
    assert [sum(t != pad for t in row) for row in got] == [min(r + 1, len(got[0])) for r in range(len(batch))]


def test_the_plan_groups_only_what_saves_reading():
    base = list(range(100, 140))  # 40 ids every row shares
    long = list(range(200, 201 + MIN_GROUP_PREFIX))
    rows = [base + long + [1], base + long + [2, 3], base + long, [*base, 9, 9]]
    plan = prefix_plan(rows, [len(base) + len(long)] * 3 + [0])
    assert plan.shared == 40
    # The third row is the group's whole prefix: the group shares one id less, so that row keeps one of its own.
    assert plan.group_of == (0, 0, 0, -1) and plan.group_lengths == (len(long) - 1,)
    assert plan.read_once(2) == len(rows[2]) - 1 and plan.read_once(3) == 40
    assert prefix_plan(rows).group_lengths == ()  # no hint, no groups
    short = [base + [7] * (MIN_GROUP_PREFIX - 1) + [r] for r in range(3)] + [[*base, 5]]
    assert prefix_plan(short, [len(base) + MIN_GROUP_PREFIX - 1] * 4).group_lengths == ()
    # Beside rows longer than the group's whole rows, its pass reads more than it saves: no group.
    costly = [base + long + [1], base + long + [2], base + [8] * 40, base + [9] * 40]
    assert prefix_plan(costly, [len(base) + len(long)] * 2 + [0, 0]).group_lengths == ()


def test_teacher_forcing_through_groups_reads_what_a_plain_forward_pass_reads(tiny_lm):
    import torch

    from llmhalluc.diagnostics.teacher_forcing import read_sequences

    model, tokenizer = tiny_lm
    rows, prefixes = continued(tokenizer)
    ends = [[len(r) - 1, len(r)] for r in rows]
    spans = [(p, len(r)) if len(r) > p else None for r, p in zip(rows, prefixes, strict=True)]
    grouped = read_sequences(model, rows, ends, token_id=3, batch_size=8, pad_id=tokenizer.pad_token_id,
                             spans=spans, group_prefix=prefixes)
    for index, row in enumerate(rows):
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([row]), output_hidden_states=True)
        probs = out.logits[0].float().softmax(-1)
        assert [p for p, _ in grouped.stats[index]] == pytest.approx([probs[n - 1, 3].item() for n in ends[index]],
                                                                      rel=1e-4, abs=1e-7)
        assert [a for _, a in grouped.stats[index]] == [probs[n - 1].argmax().item() for n in ends[index]]
        if spans[index]:
            assert torch.allclose(grouped.states[index], out.hidden_states[-1][0, len(row) - 1].double(), atol=1e-4)


def test_sampled_rows_that_end_leave_the_batch_and_the_rest_draw_as_generate(tiny_lm):
    """Rows dropped from the model's batch still draw at every step (from zeros), so the generator advances as
    generate's does and the rows still running get the samples generate gives them."""
    from llmhalluc.rng import seed_everything

    model, tokenizer = tiny_lm
    batch = prompts(tokenizer) * 2
    width = max(len(p) for p in batch)
    counting = Counting(model)
    seed_everything(11)
    expected = generate(model, tokenizer, batch, max_new_tokens=12, sample=True, stopping_criteria=[Ends(width)])
    seed_everything(11)
    got = decode(counting, tokenizer, batch, max_new_tokens=12, sample=True, stopping_criteria=Ends(width))
    assert got == expected
    assert min(counting.rows) < len(batch)
