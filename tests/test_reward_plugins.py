"""The four built-in rewards on hand-made cases, called the way TRL calls them."""

import math

import pytest
import torch
from judge_server import FakeJudge, fake_judge

from clear_rl.errors import RewardError
from clear_rl.eval import judge
from clear_rl.rewards import load_rewards

PROTOCOL = "<think>The image is sharp.</think><answer>B</answer>"
RESTORED = "<think>Too noisy.</think><image_restore><think>Now I see a dog.</think><answer>B</answer>"


def reward(name, **params):
    (function,), _ = load_rewards([{"name": name, **params}])
    return function


def call(function, completions, **columns):
    """Call as GRPOTrainer does: keyword lists aligned with completions, plus TRL's extras."""
    n = len(completions)
    extras = {"completion_ids": [[0]] * n, "trainer_state": object(), "log_extra": print, "log_metric": print}
    return function(prompts=["question"] * n, completions=completions, **columns, **extras)


def as_chat(text):
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def test_accuracy_plain_and_conversational_with_option_columns():
    completions = [
        PROTOCOL,
        as_chat("<think>t</think><answer>cat</answer>"),
        "<answer>C</answer>",
        "<answer>x</answer>",
    ]
    scores = call(
        reward("accuracy"),
        completions,
        answer=["B", "A", "B", None],
        A=["cat"] * 4,
        B=["dog"] * 4,
        C=["fish", "fish", None, "fish"],  # row 2 has no option C: "C" is no valid choice
    )
    assert scores == [1.0, 1.0, 0.0, None]


def test_accuracy_options_column_and_short_answers():
    completions = [
        "<answer>dog</answer>",
        "<answer>B</answer>",
        "<answer>3.0</answer>",
        "<answer>No.</answer>",
    ]
    options = [{"A": "cat", "B": "dog"}, '["cat", "dog"]', None, None]
    scores = call(reward("accuracy"), completions, answer=["B", "B", "3", "yes"], options=options)
    assert scores == [1.0, 1.0, 1.0, 0.0]


def test_accuracy_with_judge_asks_only_about_unsure_answers(monkeypatch):
    with fake_judge(script=[(200, "0.8")]) as url:
        monkeypatch.setenv(judge.ENV_URL, url)
        monkeypatch.setenv(judge.ENV_MODEL, "grader")
        completions = ["<answer>crimson</answer>", "<answer>red</answer>"]
        scores = call(
            reward("accuracy", judge=True), completions, answer=["red", "red"], question=["Colour?"] * 2
        )
        assert scores == [pytest.approx(0.8), 1.0]
        assert len(FakeJudge.seen) == 1  # the rules settled "red" themselves
        # decision reuses the cached verdict: correct (0.8 > 0.5) and restored -> +1
        assert call(
            reward("decision", judge=True),
            completions[:1],
            answer=["red"],
            question=["Colour?"],
            restored=[True],
        ) == [1.0]
        assert len(FakeJudge.seen) == 1


def test_accuracy_and_decision_share_one_judge_request_per_completion(monkeypatch):
    """With the judge on, accuracy then decision (as TRL calls them, one after the other) ask the
    judge once per distinct unsure completion: repeats and the second reward reuse the verdict."""
    texts = ["crimson", "red", "scarlet", "crimson", "maroon", "pink"]
    completions = [f"<think>t{i}</think><answer>{text}</answer>" for i, text in enumerate(texts)]
    columns = {
        "answer": ["red"] * 5 + [None],  # the last row has no reference: never judged
        "question": ["Colour?"] * 6,
        "restored": [True, False, True, False, False, True],
    }
    with fake_judge(script=[(200, "0.8"), (200, "0.3"), (200, "0.6")]) as url:
        monkeypatch.setenv(judge.ENV_URL, url)
        monkeypatch.setenv(judge.ENV_MODEL, "grader")
        rewards, _ = load_rewards(
            [
                {"name": "accuracy", "judge": True, "judge_workers": 1},  # one worker: replies in order
                {"name": "decision", "judge": True, "matrix": "released"},
            ]
        )
        accuracy, decision = (call(function, completions, **columns) for function in rewards)
        assert accuracy == [pytest.approx(0.8), 1.0, pytest.approx(0.3), pytest.approx(0.8), 0.6, None]
        assert decision == [1.0, 0.6, 0.4, 0.6, 0.6, None]
        asked = [request["body"]["messages"][-1]["content"] for request in FakeJudge.seen]
        assert len(asked) == 3  # crimson (twice in the batch), scarlet, maroon; "red" the rules settled
        assert [next(t for t in ("crimson", "scarlet", "maroon") if t in a) for a in asked] == [
            "crimson",
            "scarlet",
            "maroon",
        ]


def test_judge_asks_once_for_repeats_sent_concurrently(monkeypatch):
    with fake_judge() as url:
        monkeypatch.setenv(judge.ENV_URL, url)
        monkeypatch.setenv(judge.ENV_MODEL, "grader")
        scores = call(reward("accuracy", judge=True), ["<answer>crimson</answer>"] * 8, answer=["red"] * 8)
        assert scores == [1.0] * 8 and len(FakeJudge.seen) == 1  # eight workers, one request


def test_accuracy_judge_without_configuration_names_the_variables(monkeypatch):
    monkeypatch.delenv(judge.ENV_URL, raising=False)
    with pytest.raises(RewardError, match="CLEAR_RL_JUDGE_URL"):
        call(reward("accuracy", judge=True), ["<answer>x</answer>"], answer=["y"])


def test_format_graded_released_form():
    completions = [
        PROTOCOL,
        RESTORED,
        "<think>only thinking</think>",
        "<answer>B</answer>",
        "<answer>B</answer><think>late</think>",
        "B",
        as_chat(PROTOCOL),
    ]
    assert call(reward("format"), completions) == pytest.approx([1.0, 1.0, 0.35, 0.35, 0.7, 0.0, 1.0])


def test_format_binary_paper_form():
    completions = [
        PROTOCOL,
        RESTORED,
        "  " + PROTOCOL + "<|im_end|>\n",
        "<answer>B</answer>",
        "<answer>B</answer><think>late</think>",
        PROTOCOL + " trailing words",
        "<think>a</think><think>b</think><answer>B</answer>",  # a second think needs <image_restore>
        "<think></think><answer>B</answer>",  # empty think
        as_chat(RESTORED),
    ]
    assert call(reward("format", mode="binary"), completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    with pytest.raises(RewardError, match="mode must be one of"):
        call(reward("format", mode="strict"), [PROTOCOL])


RIGHT, WRONG = "<answer>B</answer>", "<answer>A</answer>"
CELLS = [  # (restored, completion) in the order restored&correct, skipped&correct, restored&wrong, skipped&wrong
    (True, RIGHT),
    (False, RIGHT),
    (True, WRONG),
    (False, WRONG),
]


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        ("paper", [1.0, 0.0, 0.0, -1.0]),
        ("released", [1.0, 0.6, 0.4, -0.2]),
        (
            {"restored_correct": 0.5, "skipped_correct": 1.0, "restored_wrong": -0.5, "skipped_wrong": -1.0},
            [0.5, 1.0, -0.5, -1.0],
        ),
    ],
)
def test_decision_every_cell(matrix, expected):
    restored = [flag for flag, _ in CELLS]
    completions = [text for _, text in CELLS]
    scores = call(
        reward("decision", matrix=matrix),
        completions,
        restored=restored,
        answer=["B"] * 4,
        A=["cat"] * 4,
        B=["dog"] * 4,
    )
    assert scores == pytest.approx(expected)


def test_decision_default_is_paper_and_unknown_answers_get_none():
    scores = call(reward("decision"), [RIGHT, WRONG], restored=[False, False], answer=["B", ""])
    assert scores == [0.0, None]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ("greedy", "matrix must be one of"),
        ({"restored_correct": 1.0}, "missing"),
        (
            {
                **{c: 0 for c in ("restored_correct", "skipped_correct", "restored_wrong", "skipped_wrong")},
                "extra": 1,
            },
            "unknown \\['extra'\\]",
        ),
    ],
)
def test_decision_bad_matrix(matrix, message):
    with pytest.raises(RewardError, match=message):
        call(reward("decision", matrix=matrix), [RIGHT], restored=[True], answer=["B"])


def test_latent_quality():
    generator = torch.Generator().manual_seed(0)
    clean = torch.randn(16, 8, 8, generator=generator)
    unrelated = torch.randn(16, 8, 8, generator=generator)
    function = reward("latent_quality")
    scores = call(
        function,
        ["a", "b", "c", "d", "e"],
        restored=[True, True, True, False, True],
        restored_latents=[clean.clone(), -clean, unrelated, clean, None],
        clean_latents=[clean, clean, clean, clean, clean],
    )
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    # Opposite latents: both cosines clamp to 0 and the MSE is 4 * mean(clean^2).
    assert scores[1] == pytest.approx(0.3 * math.exp(-0.5 * 4 * clean.pow(2).mean().item()), rel=1e-5)
    # Independent Gaussian latents: cosines near 0, MSE near 2 -> about 0.3 * e^-1 ~ 0.11 plus noise.
    assert 0.05 < scores[2] < 0.25
    assert scores[3:] == [None, None]


def test_latent_quality_patchifies_2x2_tokens_and_checks_shapes():
    clean = torch.arange(2 * 4 * 5, dtype=torch.float32).reshape(2, 4, 5) + 1
    # Swapping two pixels inside one 2x2 patch changes the per-token cosine; an odd column is dropped.
    shuffled = clean.clone()
    shuffled[:, 0, 0], shuffled[:, 0, 1] = clean[:, 0, 1], clean[:, 0, 0]
    shuffled[:, :, 4] = 0
    score = call(
        reward("latent_quality"),
        ["x"],
        restored=[True],
        restored_latents=[shuffled[None].bfloat16()],
        clean_latents=[clean],
    )[0]
    assert 0.9 < score < 1.0
    with pytest.raises(
        RewardError, match="row 1: restored latent \\(2, 4, 4\\) and clean latent \\(2, 4, 5\\)"
    ):
        call(
            reward("latent_quality"),
            ["x", "y"],
            restored=[True, True],
            restored_latents=[clean, clean[:, :, :4]],
            clean_latents=[clean, clean],
        )
