"""IFEval checkers from lm-eval: the shipped probe set, the four accuracies, the constant-answer floor, bad files."""
import json

import pytest

from selfreward.config import RECIPES_DIR
from selfreward.eval import capability


def test_shipped_probes_are_the_composed_set_over_many_types():
    shipped = [json.loads(line) for line in (RECIPES_DIR / "probes" / "ifeval.jsonl").read_text().splitlines()]
    assert shipped == json.loads(json.dumps(capability.compose_probes()))  # reproducible from the code
    types = {i for r in shipped for i in r["instruction_id_list"]}
    assert len(shipped) >= 100 and len(types) >= 15
    assert capability.read_ifeval(RECIPES_DIR / "probes" / "ifeval.jsonl") == shipped


def test_accuracies_follow_the_checkers():
    rows = [{"key": 1, "prompt": "Say hi. Your entire response should be in English, and in all lowercase letters.",
             "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
            {"key": 2, "prompt": "Explain tides. In your entire response, refrain from the use of any commas.",
             "instruction_id_list": ["punctuation:no_comma", "detectable_content:postscript"],
             "kwargs": [{}, {"postscript_marker": "P.S."}]}]
    good = capability.score(rows, ["hello there friend", "The moon pulls the sea.\nP.S. tides are neat"])
    assert good["prompt_strict"] == 1.0 and good["instruction_strict"] == 1.0
    bad = capability.score(rows, ["Hello There", "The moon, the sun, the sea."])
    assert bad["prompt_strict"] == 0.0 and bad["instruction_strict"] == 0.0
    half = capability.score(rows, ["Hello There", "The moon pulls the sea."])  # no comma, but no P.S.
    assert half["per_prompt"]["2"]["instructions"] == [True, False]
    assert half["prompt_strict"] == 0.0 and half["instruction_strict"] == pytest.approx(1 / 3)
    # loose accuracy forgives markdown emphasis and a first/last line, strict does not
    loose = capability.score(rows[:1], ["Sure! HERE it is:\nhello there friend"])
    assert loose["prompt_strict"] == 0.0 and loose["prompt_loose"] == 1.0


def test_constant_answer_floor():
    rows = capability.compose_probes()
    floor = capability.floor(rows)
    assert 0 < floor["prompt_strict"] < 0.5 and floor["prompts"] == len(rows)


@pytest.mark.parametrize("line, message", [
    ('{"key": 1, "prompt": "x", "instruction_id_list": ["nope:unknown"], "kwargs": [{}]}',
     "unknown instruction id 'nope:unknown'"),
    ('{"key": 1, "prompt": "x"}', "expected key, prompt, instruction_id_list and kwargs"),
    ('not json', "line 1 is not valid JSON"),
    ('{"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}', "differ in length"),
])
def test_bad_ifeval_files(tmp_path, line, message):
    path = tmp_path / "f.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(capability.CapabilityError, match=message):
        capability.read_ifeval(path)
