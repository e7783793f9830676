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
    ("Option A is wrong, so the answer is B", "B"),  # A is named to reject it
    ("The answer is E", None),  # not one of the options
    ("a cat or a dog", None),  # two options' texts
    ("nothing useful", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), CHOICE_CASES)
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


# Messy answers met in practice, each with the reading a user relies on: a text that names two
# options without committing to one, or only repeats them, gives None (the judge decides); a text
# that commits to one and names the others only to reject them gives the one it commits to; a
# leading claim beats option text in the explanation after it.
ANIMALS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}
MESSY_CASES = [
    # Two letters named without a commitment: never a guess.
    ("I think A or B", None),
    ("Both A and B are wrong", None),
    ("A and B", None),
    ("A or B? I'd say B", None),
    ("Neither A nor B", None),
    ("Not A", None),
    ("B is wrong", None),
    ("A\nB", None),  # two letters on their own lines: a list, not an answer
    ("A\nB\nC", None),
    ("**A** or **B**", None),
    ("The answer is A, or maybe B", None),
    ("A is right, but so is B", None),
    ("B\nThe answer is A", None),  # two commitments
    # One letter committed to, the others named only to reject them: what a careful reader scores.
    ("A is right, B is wrong", "A"),
    ("C is correct, unlike A", "C"),
    ("Option A is wrong, so the answer is B", "B"),
    ("B, not A", "B"),
    ("B (not A)", "B"),
    ("C, not A or B", "C"),
    ("B rather than A", "B"),
    ("B because A is wrong", "B"),
    ("B, because A is incorrect", "B"),
    ("D because options A, B and C are wrong", "D"),
    ("The answer is C. A is ruled out by the colour.", "C"),
    ("**B**. A is a cat, so not A.", "B"),  # the letter in bold
    ("The answer is **C**; A and B are wrong", "C"),
    ("**D** (A can't be: no whiskers)", "D"),
    ("B\nA would be a cat, but the ears say otherwise.", "B"),  # a letter on its own line, then why
    ("(C)\nOption A shows a cat and option B a dog, neither flies.", "C"),
    ("B. dog\nThe shape is close to A at first glance.", "B"),
    ("The dog; option C is unlikely", "B"),  # the option's text, another option rejected
    # Echoes of the option list are not claims; a claim after the echo still counts.
    ("A. cat B. dog C. bird D. fish", None),
    ("A. cat\nB. dog\nC. bird\nD. fish", None),
    ("(A) cat (B) dog", None),
    ("a. cat b. dog", None),
    ("It is a cat, not a dog", None),  # two options' texts, no letters
    ("A. cat B. dog C. bird D. fish\nAnswer: B", "B"),
    # Leading claims, including over option texts in the explanation.
    ("A is the answer", "A"),
    ("C would be correct", "C"),
    ("A\nThe animal looks like a dog at first, but the ears are a cat's.", "A"),
    ("B\nIt is not a cat.", "B"),
    ("B, because the fish is in a bowl", "B"),
    ("B - dog", "B"),
    ("D: fish", "D"),
    # Markdown, brackets, phrases, case, punctuation.
    ("**C**", "C"),
    ("The answer is **D**.", "D"),
    ("`B`", "B"),
    ("### Answer: D", "D"),
    ("Option (C)", "C"),
    ("Option C", "C"),
    ("the correct choice is c)", "C"),
    ("Answer: c", "C"),
    ("answer: b.", "B"),
    ("My final answer would be **A**", "A"),
    ("I choose d", "D"),
    ("The answer is a red one", None),  # "a" before a word is the article
    ("I choose D", "D"),
    ("The correct answer is (B) dog.", "B"),
    ("Answer: (A) cat", "A"),
    ("(b)", "B"),
    ("[D]", "D"),
    ("B!", "B"),
    ("b.", "B"),
    ("<answer> c </answer>", "C"),
    ("I'd go with C.", "C"),
    # Option texts, in any case; the article "A" and the pronoun "I" are not letters.
    ("DOG", "B"),
    ("Dog.", "B"),
    ("The image shows a bird.", "C"),
    ("Answer: A dog", "B"),
    ("A fish.", "D"),
    ("The answer is a dog", "B"),
    ("cat, dog, bird or fish", None),
    ("The dog; option C fits too", None),  # option text and another option's letter
    # Nothing to read.
    ("E", None),
    ("Neither", None),
    ("I can't tell.", None),
]


@pytest.mark.parametrize(("text", "expected"), MESSY_CASES)
def test_extract_choice_never_guesses(text, expected):
    assert extract_choice(text, ANIMALS) == expected


def test_letters_inside_option_texts_are_not_claims():
    plans = {"A": "Plan B", "B": "Plan C"}
    assert extract_choice("A) Plan B", plans) == "A"
    assert extract_choice("Plan C", plans) == "B"


SCORE_CASES = [
    # (prediction, reference, options, expected score)
    ("<answer>B</answer>", "B", OPTIONS, 1.0),
    ("<answer>A</answer>", "B", OPTIONS, 0.0),
    ("<answer>dog</answer>", "dog", OPTIONS, 1.0),  # reference given as the option's text
    ("<answer>B or C</answer>", "B", OPTIONS, 0.0),  # ambiguous -> no credit
    ("<answer>**B**, not A</answer>", "B", OPTIONS, 1.0),  # committed, the other rejected
    ("<answer>B\nA is a cat.</answer>", "B", OPTIONS, 1.0),
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
    # Numbers with units: the value counts, and a stated unit must agree.
    ("The length is 5 cm.", "5", None, 1.0),
    ("5cm", "5 cm", None, 1.0),
    ("5 centimeters", "5 cm", None, 1.0),
    ("5 m", "5 cm", None, 0.0),
    ("about 5", "5 cm", None, 1.0),
    ("$1,000", "1000", None, 1.0),
    ("50%", "50", None, 1.0),
    ("12 years old", "12 years", None, 1.0),
    ("Seven.", "7", None, 1.0),
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


def test_the_runner_scores_committed_answers_with_rejected_alternatives():
    """compute_hits (the benchmark runner's scoring) reads them as the regression table does."""
    import pandas as pd

    from clear_rl.eval.scoring import compute_hits

    frame = pd.DataFrame(
        {
            "prediction": ["<answer>**B**, not A</answer>", "<answer>C\nNot A: no whiskers.</answer>",
                           "<answer>A or B</answer>"],
            "answer": ["B", "C", "B"],
            **{letter: [text] * 3 for letter, text in ANIMALS.items()},
        }
    )  # fmt: skip
    assert compute_hits(frame).tolist() == [1.0, 1.0, 0.0]
