"""Constitutions as data: the shipped ones load; every malformed one is one clear line at validate."""
import pytest

from selfreward import constitution
from selfreward.config import RECIPES_DIR

GOOD = """---
name: t
version: 1
score_min: 0
score_max: 5
---
## Principles
1. [a] First.
2. [b] Second.

## Template
{principles}
<instruction>{instruction}</instruction>
<response>{response}</response>
"""


def test_shipped_constitutions():
    add = constitution.load(RECIPES_DIR / "constitutions" / "default.md")
    assert add.scoring == "additive" and len(add.principles) == 5 and add.scores == [0, 1, 2, 3, 4, 5]
    assert len(add.units()) == 1 and add.units()[0][0] is None and "5. " in add.units()[0][1]
    hh = constitution.load(RECIPES_DIR / "constitutions" / "harmless-honest.md")
    assert hh.scoring == "per_principle" and [u for u, _ in hh.units()] == ["harmless", "honest"]
    assert len(add.sha256) == 64 and add.sha256 != hh.sha256


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("1. [a] First.\n2. [b] Second.\n", ""), "no principles"),
    (lambda t: t.replace("[b]", "[a]"), "duplicate principle id 'a'"),
    (lambda t: t.replace("<response>{response}</response>", ""), "template has no {response} slot"),
    (lambda t: t.replace("score_max: 5", "score_max: 0"), "score_max > score_min"),
    (lambda t: t.replace("score_max: 5", "score_max: 12"), "single digits"),
    (lambda t: t.replace("version: 1", "version: 1\nscoring: vibes"), "scoring must be one of"),
    (lambda t: t.replace("{principles}", "{principles} {oops}"), "unknown slot {oops}"),
    (lambda t: t.split("---\n", 2)[2], "no front matter"),
    (lambda t: t.replace("2. [b] Second.", "two: second"), "principle line is not"),
])
def test_bad_constitution_is_one_line_at_validate(tmp_path, recipe_data, write_recipe, cli, edit, message):
    path = tmp_path / "constitutions" / "bad.md"
    path.write_text(edit(GOOD))
    recipe_data["judge"]["constitution"] = "constitutions/bad.md"
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data)
    out = cli("validate", recipe)
    assert out.returncode == 2
    line, = out.stderr.strip().splitlines()
    assert f"judge.constitution: {path}: " in line and message in line, line
    assert not (tmp_path / "runs").exists()


def test_good_constitution_loads(tmp_path):
    path = tmp_path / "c.md"
    path.write_text(GOOD)
    assert [p.id for p in constitution.load(path).principles] == ["a", "b"]


def test_unknown_pair_strategy_and_inconsistent_keys_fail_at_validate(tmp_path, recipe_data, write_recipe, cli):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_data)
    out = cli("validate", recipe, "judge.pair_strategy=random")
    assert out.returncode == 2 and "judge.pair_strategy: Input should be 'best_worst'" in out.stderr
    out = cli("validate", recipe, "judge.pair_strategy=anchored")
    assert out.returncode == 2 and "anchored needs data_gen.anchor_responses >= 1" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert cli("validate", recipe, "judge.pair_strategy=anchored", "data_gen.anchor_responses=1").returncode == 0
