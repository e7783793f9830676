"""Loading reward plugins from a recipe list: by name, file path and dotted path; errors that say what to fix."""

import asyncio
import inspect
import pickle
import re
import sys
import types
from pathlib import Path

import pytest
import torch

import clear_rl
from clear_rl.errors import RewardError
from clear_rl.rewards import builtin_reward_names, load_rewards, parse_reward_specs

PLUGIN = '''
def brevity(prompts, completions, max_words=3, **kwargs):
    """1.0 for answers of at most max_words words, less for longer ones."""
    return [min(1.0, max_words / max(1, len(c.split()))) for c in completions]

def strict(completions, answer):
    """No **kwargs: receives only what it names."""
    return [float(c == a) for c, a in zip(completions, answer)]

def fragile(prompts, completions, **kwargs):
    return [1.0 / len(c) for c in completions]

def too_few(prompts, completions, **kwargs):
    return [1.0]

def wordy(prompts, completions, **kwargs):
    return ["good" for c in completions]

def infinite(prompts, completions, **kwargs):
    return [float("inf") for c in completions]

def as_tensor(prompts, completions, **kwargs):
    import torch
    return torch.tensor([0.5, float("nan")])

def maybe(prompts, completions, **kwargs):
    return [0.5, None]

def batch_only(prompts, completions, **kwargs):
    if len(completions) > 1:
        raise RuntimeError("batch too large")
    return [0.0]

async def judged(prompts, completions, **kwargs):
    return [0.25 for c in completions]

async def judged_fragile(prompts, completions, **kwargs):
    return [1.0 / len(c) for c in completions]
'''


@pytest.fixture
def plugin_dir(tmp_path):
    (tmp_path / "my_rewards.py").write_text(PLUGIN)
    return tmp_path


def load_one(entry, base_dir=None):
    (function,), (weight,) = load_rewards([entry], base_dir)
    return function, weight


def test_recipe_list_loads_builtins_files_and_dotted_paths(plugin_dir, monkeypatch):
    package = plugin_dir / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rewards.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(plugin_dir))
    functions, weights = load_rewards(
        [
            {"name": "accuracy", "weight": 0.75},
            {"name": "format", "weight": 0.10},
            {"name": "decision", "weight": 0.15, "matrix": "paper"},
            {"name": "latent_quality", "weight": 0.0},
            {"path": "my_rewards.py:brevity", "weight": 0.05, "max_words": 2},
            {"path": "mypkg.rewards.brevity", "weight": 0.05},
            {"path": "mypkg.rewards:strict", "weight": 1},
        ],
        base_dir=plugin_dir,
    )
    names = [f.__name__ for f in functions]
    assert names == ["accuracy", "format", "decision", "latent_quality", "brevity", "brevity_2", "strict"]
    assert weights == [0.75, 0.10, 0.15, 0.0, 0.05, 0.05, 1.0]
    completions = ["one", "one two three four"]
    assert functions[4](prompts=["p", "p"], completions=completions) == [1.0, 0.5]  # max_words=2 bound
    assert functions[5](prompts=["p", "p"], completions=completions) == [1.0, 0.75]
    # `strict` has no **kwargs: TRL's extra keywords are filtered out, `answer` passed through.
    assert functions[6](
        prompts=["p"], completions=["x"], answer=["x"], completion_ids=[[1]], trainer_state=None
    ) == [1.0]


def test_file_path_relative_to_cwd_and_default_function_name(plugin_dir, monkeypatch):
    (plugin_dir / "brevity.py").write_text(PLUGIN)
    monkeypatch.chdir(plugin_dir)
    function, weight = load_one({"path": "brevity.py"})  # function named like the file
    assert function.__name__ == "brevity" and weight == 1.0
    assert builtin_reward_names() == ["accuracy", "decision", "format", "latent_quality"]
    assert load_one("format")[0].__name__ == "format"  # a bare name is a built-in with weight 1


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"name": "acuracy"},
            "unknown built-in reward 'acuracy' \\(did you mean 'accuracy'\\?\\); built-ins: accuracy, decision, format, latent_quality",
        ),
        ({"name": "accuracy", "path": "x.py:f"}, "exactly one of `name:`"),
        ({"weight": 1.0}, "exactly one of `name:`"),
        ({"name": "format", "weight": "high"}, "weight must be a finite number, got 'high'"),
        ({"name": "format", "weight": float("nan")}, "weight must be a finite number"),
        ({"path": "missing_file.py:fn"}, "reward file 'missing_file.py' not found"),
        (
            {"path": "my_rewards.py:absent"},
            "has no function 'absent'; it defines \\['as_tensor', 'batch_only', 'brevity'",
        ),
        ({"path": "no_such_pkg_xyz.rewards.fn"}, "cannot import module 'no_such_pkg_xyz.rewards'"),
        (
            {"path": "my_rewards.py:brevity", "max_word": 3},
            "unknown parameter\\(s\\) \\['max_word'\\] for brevity; it accepts \\['max_words'\\]",
        ),
        (
            {"name": "decision", "matrix": "greedy"},
            "rewards\\[0\\] \\(decision\\): matrix must be one of \\['paper', 'released'\\]",
        ),
        ({"name": "format", "mode": "strict"}, "mode must be one of"),
        (42, "expected a mapping"),
    ],
)
def test_load_errors_name_what_is_wrong(plugin_dir, entry, message):
    with pytest.raises(RewardError, match=message):
        load_rewards([entry], base_dir=plugin_dir)


def test_plugin_that_fails_to_import_names_the_file(tmp_path):
    (tmp_path / "broken.py").write_text("def f(prompts, completions):\n    return [\n")
    with pytest.raises(RewardError, match="importing .*broken.py failed: SyntaxError"):
        load_rewards([{"path": "broken.py:f"}], base_dir=tmp_path)
    with pytest.raises(RewardError, match="expected a non-empty list"):
        load_rewards([], base_dir=tmp_path)


def test_call_errors_name_the_plugin_and_the_row(plugin_dir):
    fragile, _ = load_one({"path": "my_rewards.py:fragile"}, plugin_dir)
    with pytest.raises(
        RewardError,
        match="rewards\\[0\\] .*my_rewards.py:fragile\\) raised on completion 1 of 3 \\(''\\): ZeroDivisionError",
    ):
        fragile(prompts=["p"] * 3, completions=["ok", "", "fine"])
    batch_only, _ = load_one({"path": "my_rewards.py:batch_only"}, plugin_dir)
    with pytest.raises(
        RewardError, match="raised on a batch of 2 completions: RuntimeError: batch too large"
    ):
        batch_only(prompts=["p"] * 2, completions=["a", "b"])
    strict, _ = load_one({"path": "my_rewards.py:strict"}, plugin_dir)
    with pytest.raises(
        RewardError, match="strict needs keyword\\(s\\) \\['answer'\\].*the batch has \\['completion_ids'\\]"
    ):
        strict(prompts=["p"], completions=["x"], completion_ids=[[1]])


def test_async_plugins_get_the_same_checks_and_errors(plugin_dir):
    fragile, _ = load_one({"path": "my_rewards.py:judged_fragile"}, plugin_dir)
    with pytest.raises(
        RewardError, match="judged_fragile\\) raised on completion 1 of 3 \\(''\\): ZeroDivisionError"
    ):
        asyncio.run(fragile(prompts=["p"] * 3, completions=["ok", "", "fine"]))
    assert asyncio.run(fragile(prompts=["p"] * 2, completions=["ab", "abcd"])) == [0.5, 0.25]


def test_the_documented_plugin_runs_as_written(tmp_path):
    """docs/rewards.md's example plugin, copied as a user would, imports its helpers from the path
    the page names and scores plain and conversational completions."""
    page = (Path(clear_rl.__file__).resolve().parents[1] / "docs" / "rewards.md").read_text()
    example = re.search(r"```python\n# my_rewards.py\n(.*?)```", page, re.S)
    assert example, "docs/rewards.md lost its my_rewards.py example"
    (tmp_path / "my_rewards.py").write_text(example.group(1))
    brevity, _ = load_one({"path": "my_rewards.py:brevity", "max_words": 2}, tmp_path)
    conversational = [{"role": "assistant", "content": [{"type": "text", "text": "far too many words"}]}]
    assert brevity(prompts=["q", "q"], completions=["two words", conversational]) == [1.0, 0.0]


def test_builtins_are_modules_of_the_checkouts_rewards_folder():
    """Built-ins import by name, as clear_rl.rewards.builtin.<name>, from the rewards/ folder beside
    the clear_rl in use (its checkout, or its wheel's copy), never another checkout's."""
    functions, _ = load_rewards(builtin_reward_names())
    modules = [sys.modules[f.function.__module__] for f in functions]
    assert [m.__name__ for m in modules] == [f"clear_rl.rewards.builtin.{n}" for n in builtin_reward_names()]
    rewards_dir = Path(clear_rl.__file__).resolve().parents[1] / "rewards"
    assert {Path(m.__file__).resolve().parent for m in modules} == {rewards_dir}


def test_output_is_checked(plugin_dir):
    def loaded(name):
        return load_one({"path": f"my_rewards.py:{name}"}, plugin_dir)[0]

    with pytest.raises(RewardError, match="returned 1 values for 3 completions \\(expected 3, got 1\\)"):
        loaded("too_few")(prompts=["p"] * 3, completions=["a", "b", "c"])
    with pytest.raises(RewardError, match="returned 'good' for completion 0: not a finite number or None"):
        loaded("wordy")(prompts=["p"], completions=["a"])
    with pytest.raises(RewardError, match="returned inf for completion 0"):
        loaded("infinite")(prompts=["p"], completions=["a"])
    with pytest.raises(
        RewardError, match=r"rewards\[0\] \(.*my_rewards\.py:as_tensor\) returned NaN for completion 1 of 2"
    ):
        loaded("as_tensor")(prompts=["p"] * 2, completions=["a", "b"])  # a tensor with a NaN
    assert loaded("maybe")(prompts=["p"] * 2, completions=["a", "b"]) == [0.5, None]  # None: not scored


def test_loaded_rewards_pickle_and_async_plugins_stay_async(plugin_dir):
    brevity, _ = load_one({"path": "my_rewards.py:brevity", "max_words": 1}, plugin_dir)
    copy = pickle.loads(pickle.dumps(brevity))
    assert copy(prompts=["p"], completions=["a b"]) == [0.5] and copy.__name__ == "brevity"
    judged, _ = load_one({"path": "my_rewards.py:judged"}, plugin_dir)
    assert inspect.iscoroutinefunction(judged.__call__)  # what TRL's is_async_callable checks
    assert asyncio.run(judged(prompts=["p"] * 2, completions=["a", "b"])) == [0.25, 0.25]


def test_parse_keeps_params_and_positions(plugin_dir):
    specs = parse_reward_specs(
        [{"name": "decision", "weight": 0.15, "matrix": "released"}, "format"], plugin_dir
    )
    assert specs[0].params == {"matrix": "released"} and specs[0].weight == 0.15 and specs[1].position == 1


@pytest.mark.slow  # importing trl's trainer takes ~10 s on a busy 2-core machine
def test_trl_calculate_rewards_accepts_the_loaded_functions(plugin_dir):
    """Run TRL's own `_calculate_rewards` (nothing of the trainer but the attributes it reads)."""
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import get_callable_name, is_async_callable

    judged, _ = load_one({"path": "my_rewards.py:judged"}, plugin_dir)
    assert is_async_callable(judged) and get_callable_name(judged) == "judged"
    functions, weights = load_rewards(
        [
            {"name": "accuracy", "weight": 0.75},
            {"name": "format", "weight": 0.1},
            {"name": "decision", "weight": 0.15},
            {"name": "latent_quality", "weight": 0.0},
        ]
    )
    trainer = types.SimpleNamespace(
        accelerator=types.SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=types.SimpleNamespace(report_to=[]),
        reward_funcs=functions,
        reward_processing_classes=[None] * len(functions),
        reward_func_names=[get_callable_name(f) for f in functions],
        state=types.SimpleNamespace(global_step=0),
        environments=None,
        _log_completion_extra=lambda *a, **k: None,
        _log_metric=lambda *a, **k: None,
    )
    inputs = [
        {
            "prompt": "q",
            "answer": "B",
            "A": "cat",
            "B": "dog",
            "restored": True,
            "restored_latents": torch.ones(4, 2, 2),
            "clean_latents": torch.ones(4, 2, 2),
        },
        {
            "prompt": "q",
            "answer": "B",
            "A": "cat",
            "B": "dog",
            "restored": False,
            "restored_latents": None,
            "clean_latents": torch.ones(4, 2, 2),
        },
    ]
    completions = ["<think>t</think><image_restore><think>r</think><answer>B</answer>", "<answer>A</answer>"]
    rewards = GRPOTrainer._calculate_rewards(trainer, inputs, ["q", "q"], completions, [[1], [2]])
    expected = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.35, -1.0, float("nan")]])
    assert torch.allclose(rewards, expected, equal_nan=True)
    total = (rewards * torch.tensor(weights)).nansum(dim=1)  # what GRPOTrainer does next
    assert torch.allclose(total, torch.tensor([1.0, 0.035 - 0.15]))
