"""`selfreward eval` (selfreward/evaluate.py) refuses a bad run directory, iteration or IFEval file in one line,
before any model loads, and writes nothing."""
import pytest

from selfreward import evaluate
from selfreward.config import RecipeError


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def test_mistakes_are_one_line_before_any_model_loads(tmp_path):
    with pytest.raises(RecipeError, match="not a run directory"):
        evaluate.evaluate_ifeval(tmp_path / "nope", 0, tmp_path / "x.jsonl")
    (tmp_path / "run.yaml").write_text("")  # the checks below come before the recipe is read
    before = _files(tmp_path)
    with pytest.raises(RecipeError, match=r"iteration 1 has no trained adapter \(.*iter_001/train/adapter\)"):
        evaluate.evaluate_ifeval(tmp_path, 1, tmp_path / "x.jsonl")
    with pytest.raises(RecipeError, match="x.jsonl: IFEval file not found"):
        evaluate.evaluate_ifeval(tmp_path, 0, tmp_path / "x.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"key": 1}\n')
    with pytest.raises(RecipeError, match="bad.jsonl line 1: expected key, prompt, instruction_id_list and kwargs"):
        evaluate.evaluate_ifeval(tmp_path, 0, tmp_path / "bad.jsonl")
    assert _files(tmp_path) == sorted([*before, tmp_path.joinpath("bad.jsonl").relative_to(tmp_path)])
