from selfreward.data_gen.prompts import clean, reject_reason, rouge_l, tokens
from selfreward.config import DataGenCfg


def test_rouge_l():
    a = tokens("Write a poem about the sea")
    assert rouge_l(a, a) == 1.0
    assert rouge_l(a, tokens("Compute the integral of x squared")) < 0.3
    assert 0.5 < rouge_l(a, tokens("Write a short poem about the sea")) < 1.0
    assert rouge_l([], a) == 0.0


def test_clean_takes_first_line_without_label():
    assert clean("Task: Explain tides to a child.\nTask: another") == "Explain tides to a child."
    assert clean('\n  "New task 3: List three uses of vinegar."') == "List three uses of vinegar."


def test_filters():
    dg = DataGenCfg(min_words=4, max_words=12)
    seen = [tokens("Explain how tides work to a ten year old")]
    assert reject_reason("Explain how tides work to a ten year old child", dg, seen) == "near_duplicate"
    assert reject_reason("Hi there", dg, seen) == "too_short"
    assert reject_reason(" ".join(["word"] * 13), dg, seen) == "too_long"
    assert reject_reason("Draw a picture of a cat sitting on a mat", dg, seen) == "banned_word"
    assert reject_reason("- list three fruits that are red", dg, seen) == "starts_with_symbol"
    assert reject_reason("Name three rivers in Europe and their lengths", dg, seen) is None
