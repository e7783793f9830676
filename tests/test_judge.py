"""The optional LLM judge, against a chat-completions server on 127.0.0.1 inside the test process."""

import logging
import threading
import time

import pytest
from judge_server import FakeJudge, fake_judge, silent_judge

from clear_rl.eval import judge
from clear_rl.eval.judge import JudgeConfig, JudgeError, judge_score, judge_scores, parse_score

SECRET = "sk-test-secret-123"


@pytest.fixture
def server():
    with fake_judge() as url:
        yield url


def config_for(url, **kw):
    env = {judge.ENV_URL: url, judge.ENV_MODEL: "grader", judge.ENV_API_KEY: SECRET}
    return JudgeConfig.from_env(env, retry_wait_s=0.0, timeout_s=5.0, **kw)


def test_scores_and_request_shape(server):
    FakeJudge.script = [(200, "0.7"), (200, "Score: 1.0")]
    config = config_for(server)
    assert judge_score("What colour?", "red", "crimson", config) == pytest.approx(0.7)
    assert judge_score("How many?", "3", "three", config) == 1.0
    first = FakeJudge.seen[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == f"Bearer {SECRET}"
    assert first["body"]["model"] == "grader" and first["body"]["temperature"] == 0.0
    assert "crimson" in first["body"]["messages"][-1]["content"]


def test_answers_are_cached_and_batched_in_order(server):
    FakeJudge.script = [(200, "0.0"), (200, "1.0")]
    config = config_for(server)
    scores = judge_scores(["q", "q"], ["a", "b"], ["x", "y"], config, max_workers=1)
    assert scores == [0.0, 1.0]
    assert judge_score("q", "a", "x", config) == 0.0  # cached: no third request
    assert len(FakeJudge.seen) == 2


def test_retries_transient_failures_then_succeeds(server):
    FakeJudge.script = [(503, "busy"), (200, "no idea"), (200, "Score: 0.4")]
    assert judge_score("q", "a", "p", config_for(server, retries=2)) == pytest.approx(0.4)
    assert len(FakeJudge.seen) == 3


def test_errors_name_the_problem_but_never_the_key(server):
    FakeJudge.script = [(401, f'{{"error": "bad key {SECRET}"}}')]
    with pytest.raises(JudgeError, match="HTTP 401") as info:
        judge_score("q", "a", "p", config_for(server))
    assert SECRET not in str(info.value) and "<redacted>" in str(info.value)
    FakeJudge.script = [(200, "maybe"), (200, "perhaps")]
    with pytest.raises(JudgeError, match="no score in \\[0, 1\\]") as info:
        judge_score("q2", "a", "p", config_for(server, retries=1))
    assert SECRET not in str(info.value) and SECRET not in repr(config_for(server))


def test_unreachable_and_unconfigured():
    judge._cached_score.cache_clear()
    closed = config_for("http://127.0.0.1:9/v1", retries=0)  # the discard port: refused
    with pytest.raises(JudgeError, match="cannot reach the judge at http://127.0.0.1:9/v1/chat/completions"):
        judge_score("q", "a", "p", closed)
    with pytest.raises(JudgeError, match="CLEAR_RL_JUDGE_URL"):
        JudgeConfig.from_env({})
    with pytest.raises(JudgeError, match="http"):
        JudgeConfig.from_env({judge.ENV_URL: "file:///etc/passwd", judge.ENV_MODEL: "m"})
    assert not judge.judge_configured({})


@pytest.mark.parametrize(
    "reply, score",
    [("0.5", 0.5), ("Correctness: 1.0", 1.0), ("Correctness score: 0.3", 0.3), ("Score: 0.4.", 0.4),
     ("1", 1.0), ("0", 0.0), (" 0.7 |\n", 0.7), (".9", 0.9)],
)  # fmt: skip
def test_a_well_formed_reply_is_its_score(reply, score):
    assert parse_score(reply) == pytest.approx(score)


@pytest.mark.parametrize(
    "reply",
    [
        "Sorry, I can't grade that right now (request id req_a1b2).",  # a refusal with a digit in an id
        "req_1", "id 0", "2024-01-05", "12/03/2024", "Graded at 10:00",  # ids, dates, times
        "The prediction lists 3 items, so 0.", "I would give it 1.0 because it matches",  # prose
        "0.7 or 0.8", "7", "1.5", "-0.1", "n/a", "True", "false", "", "Score:",
    ],
)  # fmt: skip
def test_anything_else_is_no_score(reply):
    assert parse_score(reply) is None


def test_a_refusing_judge_scores_nothing_it_fails_or_falls_back_to_the_rules(server, caplog):
    # The reported case: a refusal with a request id was scored 1.0 on 20 wrong answers.
    refusal = "Sorry, I can't grade that right now (request id req_a1b2)."
    FakeJudge.script = [(200, refusal)] * 2
    with pytest.raises(JudgeError, match="is no score in \\[0, 1\\]"):
        judge_score("q", "a", "wrong", config_for(server, retries=1))
    FakeJudge.script = [(200, refusal)] * 40
    config = config_for(server, retries=1, on_failure="rules")
    with caplog.at_level(logging.WARNING, logger="clear_rl.eval.judge"):
        scores = judge_scores(["q"] * 20, ["a"] * 20, [f"wrong {i}" for i in range(20)], config)
    assert scores == [None] * 20  # the callers keep the rule scores
    assert "LLM judge failed" in caplog.text and "20 of 20 answers" in caplog.text


def test_timeout_retries_and_failure_policy_come_from_the_environment():
    base = {judge.ENV_URL: "http://127.0.0.1:9/v1", judge.ENV_MODEL: "m"}
    default = JudgeConfig.from_env(base)
    assert (default.timeout_s, default.retries, default.on_failure) == (20.0, 1, "fail")
    # Worst case per answer, waits included: well below the 3 x 60 s it used to be.
    assert (default.retries + 1) * default.timeout_s + default.retry_wait_s * default.retries <= 45
    set_env = {**base, judge.ENV_TIMEOUT: "2.5", judge.ENV_RETRIES: "0", judge.ENV_ON_FAILURE: "Rules"}
    chosen = JudgeConfig.from_env(set_env)
    assert (chosen.timeout_s, chosen.retries, chosen.on_failure) == (2.5, 0, "rules")
    for name, value in ((judge.ENV_TIMEOUT, "soon"), (judge.ENV_TIMEOUT, "0"), (judge.ENV_RETRIES, "-1"),
                        (judge.ENV_RETRIES, "1.5"), (judge.ENV_ON_FAILURE, "ignore")):  # fmt: skip
        with pytest.raises(JudgeError, match=name):
            JudgeConfig.from_env({**base, name: value})


def _finishes_within(seconds, fn):
    """Run fn in a thread; (finished in time, its result or exception)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            outcome["value"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), outcome.get("value")


def test_a_judge_that_accepts_and_never_answers_fails_within_the_configured_time(monkeypatch):
    with silent_judge() as url:
        monkeypatch.setenv(judge.ENV_URL, url)
        monkeypatch.setenv(judge.ENV_MODEL, "grader")
        monkeypatch.setenv("CLEAR_RL_JUDGE_TIMEOUT", "0.3")  # the documented names, spelled out
        monkeypatch.setenv("CLEAR_RL_JUDGE_RETRIES", "1")
        began = time.perf_counter()
        finished, result = _finishes_within(10, lambda: judge_score("q", "a", "p"))
        assert finished, "the judge call blocked past its configured timeout and retries"
        assert isinstance(result, JudgeError) and "after 2 attempts" in str(result)
        assert time.perf_counter() - began < 5


def test_a_judge_that_stays_down_can_fall_back_to_the_rules_with_a_counted_warning(monkeypatch, caplog):
    from clear_rl.rewards import answer_grades, answer_scores

    columns = {"question": ["Which?"] * 3, "A": ["cat"] * 3, "B": ["dog"] * 3}
    completions = ["<answer>A or B</answer>", "<answer>B</answer>", "<answer>cat, I guess</answer>"]
    with silent_judge() as url:
        for name, value in ((judge.ENV_URL, url), (judge.ENV_MODEL, "grader"), (judge.ENV_TIMEOUT, "0.3"),
                            (judge.ENV_RETRIES, "0")):  # fmt: skip
            monkeypatch.setenv(name, value)
        with pytest.raises(JudgeError, match="cannot reach the judge|timed out"):  # the default: fail
            answer_scores(completions, ["B", "B", "B"], columns, judge=True)
        monkeypatch.setenv(judge.ENV_ON_FAILURE, "rules")
        before = judge.JUDGE_FAILURES.total
        began = time.perf_counter()
        with caplog.at_level(logging.WARNING, logger="clear_rl.eval.judge"):
            finished, grades = _finishes_within(
                10, lambda: answer_grades(completions, ["B"] * 3, columns, judge=True)
            )
        assert finished and time.perf_counter() - began < 3  # one timeout for the batch, not one per answer
        assert grades.scores == [0.0, 1.0, 0.0] and grades.graded_by == ["rules"] * 3
        assert judge.JUDGE_FAILURES.total - before == 2  # the two answers the rules did not find right
        assert "2 of 2 answers in this batch scored by the rules" in caplog.text


def test_mm_vet_style_sends_mm_vets_own_grading_prompt(server):
    FakeJudge.script = [(200, "0.5")]
    score = judge_score("What is x?", "-1<AND>-5", "x = -1", config_for(server), style="mmvet")
    assert score == 0.5
    messages = FakeJudge.seen[0]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"].startswith("Compare the ground truth and prediction from AI models")
    assert messages[0]["content"].endswith("What is x? | -1 <AND> -5 | x = -1 | ")
    with pytest.raises(JudgeError, match="style must be one of default, mmvet"):
        judge_score("q", "a", "p", config_for(server), style="gpt4")
