import pytest

from selfreward.judging import parse_score, parse_winner


@pytest.mark.parametrize("text, score", [
    ("Score: 4\nThe response is clear.", 4.0),
    ("Score:3", 3.0),
    ("score = 5/5 because it is great", 5.0),
    ("Score: **2** points. Later: Score: 5", 2.0),  # the rubric asks for the score first
    ("Score: 0", 0.0),
    ("Score: 2.5 out of 5", 2.5),
])
def test_scores_parse(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("text", ["", "I would give it four points.", "Score: 7", "Score: ten", "Scores vary",
                                  "Score: 10", "Score: 10/10", "Score: 4/10", "Score: 15"])
def test_unparsable_or_out_of_range_is_none(text):
    assert parse_score(text) is None


@pytest.mark.parametrize("text, winner", [
    ("Winner: A\nbecause", "A"), ("winner: b", "B"), ("Winner: Response B is better", "B"),
    ("Winner: (A)", "A"), ("No winner here", None), ("Winner: C", None),
])
def test_winner(text, winner):
    assert parse_winner(text) == winner


def test_preference_from_first_token_logprobs():
    import math

    from selfreward.judging import preference_a

    lp = {" A": math.log(0.6), "A": math.log(0.1), " B": math.log(0.1), " The": math.log(0.2)}
    assert preference_a(lp) == pytest.approx(0.7 / 0.8)
    assert preference_a({" The": -0.1}) is None
    assert preference_a(None) is None
