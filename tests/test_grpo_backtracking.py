"""GRPO that can grow backtracking: the rollout-only backtrack bias, max_backtracks: auto, corrected/broken curves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmhalluc import lineage
from llmhalluc.backtrack.reach import rollout_bias_kwargs, with_rollout_bias
from llmhalluc.errors import DataError
from llmhalluc.params.sections import BacktrackRewardOptions, RewardsParams
from llmhalluc.rewards import AUTO_MARGIN, AnswerJudge, resolve_max_backtracks
from tests.test_rewards import ABSTAIN_PATTERN, Completions, c, tokenizer  # noqa: F401 (fixtures)
from tests.tiny_project import run

# --------------------------------------------------------------------------- the rollout bias, unit level


def test_rollout_bias_is_the_key_each_generation_path_reads():
    assert rollout_bias_kwargs(0.0, 7, use_vllm=False) == {} == rollout_bias_kwargs(0.0, 7, use_vllm=True)
    # transformers' GenerationConfig.sequence_bias (list form), vLLM's SamplingParams.logit_bias
    assert rollout_bias_kwargs(4, 7, use_vllm=False) == {"sequence_bias": [[[7], 4.0]]}
    assert rollout_bias_kwargs(4, 7, use_vllm=True) == {"logit_bias": {7: 4.0}}


def test_rollout_bias_joins_the_users_generation_kwargs():
    from trl import GRPOConfig

    config = GRPOConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none",
                        generation_kwargs={"suppress_tokens": [3]})
    with_rollout_bias(config, 2.5, 9)
    assert config.generation_kwargs == {"suppress_tokens": [3], "sequence_bias": [[[9], 2.5]]}


# --------------------------------------------------------------------------- max_backtracks: auto


def sft_lineage(unit: str, most: int | None) -> dict:
    lengths = {"max_completion_tokens": 40} if most is None else {"max_completion_tokens": 40, "max_backtracks": most}
    return {"stage": "train_sft", "kind": "full", "retraction": {"unit": unit}, "lengths": lengths, "parent": None}


def auto(upstream, needed=True):
    lengths = lineage.Lineage.of(upstream).lengths
    return resolve_max_backtracks(RewardsParams(), lengths, needed=needed).backtrack.max_backtracks


def test_auto_max_backtracks_fits_the_unit_from_the_sft_lineage():
    assert RewardsParams().backtrack.max_backtracks == "auto"
    # token unit with a real tokenizer: one wrong step is ~20 backtracks; the cap leaves room for two
    assert auto(sft_lineage("token", 21)) == AUTO_MARGIN * 21 == 42
    # step / retry: one backtrack per wrong step
    assert auto(sft_lineage("step", 1)) == 2 and auto(sft_lineage("retry", 2)) == 4
    # error-free SFT data: the floor (the over-cap penalty divides by it)
    assert auto(sft_lineage("step", 0)) == 1 == auto(sft_lineage("token", 0))
    # a GRPO model's lineage: SFT's record is found up the parent chain
    grpo = {"stage": "train_grpo", "kind": "full", "parent": {"path": "models/sft",
                                                               "lineage": sft_lineage("token", 5)}}
    assert auto(grpo) == 10


def test_an_int_max_backtracks_is_kept_and_auto_without_a_record_fails_only_when_used():
    given = RewardsParams(backtrack=BacktrackRewardOptions(max_backtracks=16))
    assert resolve_max_backtracks(given, {"max_backtracks": 21}, needed=True) is given
    assert auto(sft_lineage("token", None), needed=False) == "auto"
    with pytest.raises(DataError, match=r"max_backtracks: auto needs the SFT model.s lineage\.json"):
        auto(None)


# --------------------------------------------------------------------------- corrected / broken


def test_corrected_and_broken_on_hand_made_completions(tokenizer, c: Completions):  # noqa: F811
    from llmhalluc import tracking

    judge = AnswerJudge(pattern=ABSTAIN_PATTERN, abstain="unanswerable")
    completions = [
        c.build("3 + 4 = 7. The answer is ", c.retract("8."), "7."),  # stripped says 8.7, resolved 7: corrected
        c.build(c.retract("3 + 4 = 7. The answer is 7.")),  # stripped right, resolved blank: broken
        c.build("3 + 4 = ", c.retract("8."), "7. The answer is 7."),  # right either way: neither
        c.build("3 + 4 = 7. The answer is 7."),  # no backtracks: neither
        c.build("3 + 4 = 8. The answer is ", c.retract("9."), "8."),  # wrong either way: neither
    ]
    logged: dict[str, float] = {}

    def reward(prompts, completions, completion_ids, **columns):
        return [0.0] * len(completion_ids)

    observed = tracking.observe_completions(reward, tokenizer, c.bt, judge=judge)
    observed(prompts=[""] * 5, completions=[""] * 5, completion_ids=completions, answer=["7"] * 5,
             answerable=[True] * 5, log_metric=logged.__setitem__, log_extra=None, trainer_state=None)
    assert logged["backtracks/corrected"] == 1 / 5 and logged["backtracks/broken"] == 1 / 5
    assert logged["backtracks/share_with_any"] == 4 / 5
    # without the gold answer column (or a judge) the two are not logged rather than guessed
    logged.clear()
    observed(prompts=[""], completions=[""], completion_ids=completions[:1], log_metric=logged.__setitem__)
    assert "backtracks/corrected" not in logged


# --------------------------------------------------------------------------- a tiny GRPO run with the bias

BIAS = 60.0  # so large that every rollout token is the backtrack token


@pytest.fixture(scope="module")
def sft_with_errors(tmp_path_factory) -> Path:
    """data/prepared and a full SFT model trained on data with errors and their backtracks (token unit)."""
    folder = tmp_path_factory.mktemp("sft")
    run("prepare", "prepare", folder, {"prepare.backtrack.error_rate": 1.0})
    run("train_sft", "sft", folder, {"sft.max_steps": 2})
    return folder


def test_bias_in_rollouts_absent_from_the_saved_model_and_eval(tmp_path: Path, sft_with_errors: Path,
                                                               monkeypatch, grpo_recorder) -> None:
    from llmhalluc import evaluation
    from llmhalluc.models import load_model_and_tokenizer

    seen = grpo_recorder
    for name in ("data", "models"):
        shutil.copytree(sft_with_errors / name, tmp_path / name)
    run("train_grpo", "grpo", tmp_path, {"grpo.rollout_backtrack_bias": BIAS, "grpo.max_steps": 1,
                                         "grpo.reward_funcs": ["accuracy", "format", "backtrack"],
                                         "grpo.reward_weights": [1.0, 0.5, 0.2]})
    sft = json.loads((tmp_path / "models/sft/lineage.json").read_text())
    bt = sft["backtrack_id"]
    most = sft["lengths"]["max_backtracks"]
    assert most >= 1  # every SFT example carries an error and its backtracks

    # In the rollouts: the trainer's own generation settings carry the bias, and the samples show it.
    (trainer,) = seen["trainers"]
    assert trainer.generation_config.sequence_bias == [[[bt], BIAS]]
    assert trainer.model.generation_config.sequence_bias is None
    (batch,) = seen["batches"]
    ids = batch["completion_ids"][batch["completion_mask"].bool()]
    assert (ids == bt).float().mean() > 0.9

    # Recorded: the bias (of the rollouts), the generation_kwargs that ran, and max_backtracks resolved from SFT.
    lineage = json.loads((tmp_path / "models/grpo/lineage.json").read_text())
    assert lineage["rollout_backtrack_bias"] == BIAS
    assert lineage["params"]["generation_kwargs"] == {"sequence_bias": [[[bt], BIAS]]}
    assert lineage["params"]["rewards"]["backtrack"]["max_backtracks"] == max(1, AUTO_MARGIN * most)
    resolved = json.loads((tmp_path / "models/grpo/resolved_params.json").read_text())
    assert resolved["rewards"]["backtrack"]["max_backtracks"] == max(1, AUTO_MARGIN * most)

    # Not in the saved model: its generation_config.json has no bias.
    saved = json.loads((tmp_path / "models/grpo/generation_config.json").read_text())
    assert "sequence_bias" not in saved and "logit_bias" not in saved

    # Not in eval: the model eval loads has none, and eval's greedy decoding (decoding.decode_batch) reads the
    # model's logits alone, no generation config: a bias left in one would not reach it either.
    model, tok = load_model_and_tokenizer(str(tmp_path / "models/grpo"))
    assert model.generation_config.sequence_bias is None
    prompt = tok.apply_chat_template([{"role": "user", "content": "Start with 3. Add 4."}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    greedy = evaluation.Sampling(do_sample=False, max_new_tokens=8, temperature=1.0, top_p=1.0, seed=0)
    out = evaluation.generate_transformers(model, tok, [prompt], batch_size=1, sampling=greedy)
    model.generation_config.sequence_bias = [[[bt], BIAS]]
    assert evaluation.generate_transformers(model, tok, [prompt], batch_size=1, sampling=greedy) == out
    assert out[0].count(bt) < len(out[0]) or not out[0]  # greedy from the model alone, not the biased sampler

    # The per-step curves reach DVCLive and the plots dvc.yaml declares.
    live = tmp_path / "dvclive/train_grpo"
    metrics = json.loads((live / "metrics.json").read_text())["train"]["backtracks"]
    assert {"mean_per_completion", "share_with_any", "corrected", "broken"} <= set(metrics)
    for name in ("corrected", "broken"):
        assert (live / f"plots/metrics/train/backtracks/{name}.tsv").read_text().split()[:2] == ["step", name]
    declared = (Path(__file__).resolve().parent.parent / "dvc.yaml").read_text()
    assert "dvclive/train_grpo/plots/metrics/train/backtracks/corrected.tsv" in declared
