"""Answer extraction and matching: the table of cases the accuracy reward and the runner rely on."""

import pytest

from clear_rl.eval.extract import (
    extract_answer_block,
    extract_choice,
    normalize_text,
    parse_number,
    score_answer,
)

OPTIONS = {"A": "cat", "B": "dog", "C": "red car", "D": "car"}

CHOICE_CASES = [
    ("B", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("B) dog", "B"),
    ("B: dog", "B"),
    ("**B**", "B"),
    ("[C]", "C"),
    ("The answer is D.", "D"),
    ("Answer: A", "A"),
    ("the correct option is (c)", "C"),
    ("c", "C"),
    ("<think>Maybe A? The image is noisy.</think><answer>C</answer>", "C"),
    ("<think>x</think><image_restore><think>now clear</think><answer>(D) car</answer>", "D"),
    ("<think>x</think><answer>B", "B"),  # truncated: unclosed answer block runs to the end
    ("dog", "B"),  # option text
    ("A dog.", "B"),  # "A" is an article here, "dog" is option B
    ("It is a red car", "C"),  # "red car" wins over its substring "car"
    ("I think B", "B"),  # "I" is a pronoun, not an option
    ("B, C", None),  # two letters claimed
    ("Option A is wrong, so the answer is B", None),  # two letters claimed
    ("The answer is E", None),  # not one of the options
    ("a cat or a dog", None),  # two options' texts
    ("nothing useful", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), CHOICE_CASES)
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


SCORE_CASES = [
    # (prediction, reference, options, expected score)
    ("<answer>B</answer>", "B", OPTIONS, 1.0),
    ("<answer>A</answer>", "B", OPTIONS, 0.0),
    ("<answer>dog</answer>", "dog", OPTIONS, 1.0),  # reference given as the option's text
    ("<answer>B or C</answer>", "B", OPTIONS, 0.0),  # ambiguous -> no credit
    ("The answer is B", "B", None, 1.0),  # letter reference without option columns
    ("3.0", "3", None, 1.0),
    ("1,000", "1000", None, 1.0),
    ("There are seven apples.", "7", None, 1.0),
    ("3.0004", "3", None, 1.0),  # within the relative tolerance
    ("3.1", "3", None, 0.0),
    ("2 or 3", "3", None, 0.0),  # no single stated value
    ("-5", "-5", None, 1.0),
    ("5", "-5", None, 0.0),
    ("Yes, it is.", "yes", None, 1.0),
    ("No, not yes.", "yes", None, 0.0),
    ("The Eiffel Tower!", "eiffel tower", None, 1.0),  # case, article, punctuation
    ("The car is red.", "red", None, 1.0),  # reference phrase inside a short answer
    ("It could be red, blue, green, yellow, orange, purple or pink", "red", None, 0.0),  # a list of guesses
    ("blue", "red", None, 0.0),
    ("x = -1 or x = -5", "-1<AND>-5", None, 1.0),  # MM-Vet <AND>
    ("x=-1", "-1<AND>-5", None, 0.5),
    ("It is a Reishi mushroom", "Lingzhi<OR>Reishi", None, 1.0),  # MM-Vet <OR>
    ("<think>the answer is 4</think><answer>5</answer>", "5", None, 1.0),  # only the answer block counts
]


@pytest.mark.parametrize(("prediction", "reference", "options", "expected"), SCORE_CASES)
def test_score_answer(prediction, reference, options, expected):
    assert score_answer(prediction, reference, options) == pytest.approx(expected)


def test_answer_block_and_normalization():
    assert extract_answer_block("<think>a</think><answer> B </answer><|im_end|>") == "B"
    assert extract_answer_block("<think>reasoning</think> final: C") == "final: C"
    assert extract_answer_block("<think>only thinking</think>") == "<think>only thinking</think>"
    assert normalize_text("The Answer: 1,000.50!") == "answer 1000.50"
    assert normalize_text("range 3-5, x=-2.5") == "range 3 5 x -2.5"
    assert parse_number("1,000") == 1000.0 and parse_number("seven") == 7.0 and parse_number("7 cats") is None


def test_empty_reference_is_an_error():
    with pytest.raises(ValueError, match="non-empty reference"):
        score_answer("B", "  ")
