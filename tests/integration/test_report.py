"""`selfreward report` and `selfreward status` on real runs of a tiny random Llama (transformers engine, logprob
judge): two iterations through the CLI, one run whose iteration ends with zero pairs, one run with no iteration.
The page is checked as a user gets it: its images decode, its sections are there, text from the run is escaped,
and headless Chromium renders it to a screenshot that is not blank."""
import base64
import html
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
import yaml

from selfreward import artifacts, config, loop, runlock
from selfreward.records import read_json, read_jsonl

SECTIONS = ["Overview", "Judge scores", "Response lengths", "Diversity", "Win rate and capability",
            "Known-answer accuracy of the judge", "Pair yield", "DPO training", "Gate decisions", "Examples"]
# the tags the report writes; text from the run must never add one
TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "nav", "a", "section", "table",
        "thead", "tbody", "tr", "th", "td", "img", "ul", "li", "div", "pre", "b"}


def _recipe(tmp, model_dir, recipes_dir, name, **judge):
    probes = (recipes_dir / "probes" / "default.jsonl").read_text().splitlines()
    (tmp / "probes.jsonl").write_text("\n".join(probes[:4]) + "\n")
    ifeval = (recipes_dir / "probes" / "ifeval.jsonl").read_text().splitlines()
    (tmp / "ifeval.jsonl").write_text("\n".join(ifeval[:4]) + "\n")
    data = {
        "run": {"name": name, "output_dir": str(tmp / "runs"), "iterations": 2},
        "model": {"ref": str(model_dir), "engine": "hf", "dtype": "float32"},
        # a random model's instructions: accept any length and overlap so that every round yields prompts
        "data_gen": {"num_prompts": 3, "prompts_per_round": 6, "prompt_max_tokens": 16, "min_words": 1,
                     "max_similarity": 1.0, "banned_words": [], "n_responses": 3, "max_tokens": 12,
                     "shard_size": 9},
        "judge": {"mode": "logprob", "min_score_mass": 1e-9, "allow_truncated": True, "known_answer_pairs": 4,
                  **judge},
        "train": {"per_device_train_batch_size": 1, "max_length": 64, "learning_rate": 0.005, "lora_r": 4},
        # a random model shows no evidence of improvement (its verdict tokens carry no probability, so the win
        # rate is not measured): the gate refuses every candidate, and each iteration starts from M0
        "eval": {"probes": str(tmp / "probes.jsonl"), "capability_probes": str(tmp / "ifeval.jsonl"),
                 "max_tokens": 12, "capability_max_tokens": 12},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _selfreward(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "selfreward.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout)


def _status_rows(stdout: str) -> dict[str, list[str]]:
    return {line.split()[0]: re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()
            if re.match(r"iter_\d{3}\s", line)}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, recipes_dir):
    """Two iterations through `selfreward run`; `status` is taken once while the run is frozen (SIGSTOP) inside
    a stage, so that its lock is held by a live process."""
    tmp = tmp_path_factory.mktemp("report")
    recipe = _recipe(tmp, tiny_model_dir, recipes_dir, "tiny")
    run_dir = tmp / "runs" / "tiny"
    proc = subprocess.Popen([sys.executable, "-m", "selfreward.cli", "run", str(recipe)], cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started = run_dir / "iter_001" / "judge" / "started.json"
    deadline = time.time() + 300
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGSTOP)
    try:
        during = _selfreward("status", run_dir, cwd=tmp)
        frozen = {s: (run_dir / "iter_001" / s / "manifest.json").exists() for s in ("judge", "train", "eval")}
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return run_dir, during, frozen


def test_status_while_running_and_after(tiny_run, tmp_path):
    run_dir, during, frozen = tiny_run
    assert during.returncode == 0, during.stderr
    assert re.search(r"^lock: written by pid \d+ on ", during.stdout, re.M), during.stdout
    # the first stage that started without finishing is the one running
    running = next(s for s in ("judge", "train", "eval") if not frozen[s])
    row = _status_rows(during.stdout)["iter_001"]
    assert row[1].startswith("done") and row[1 + ("data_gen", "judge", "train", "eval").index(running)] == "running"
    assert "pending" in row or running == "eval"

    out = _selfreward("status", run_dir, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    state = read_json(run_dir / "state.json")
    assert out.stdout.splitlines()[0] == f"run {run_dir}: promoted iteration 0 ({state['model']})"
    assert state["promoted_iteration"] == 0 and [h["promoted"] for h in state["history"]] == [False, False]
    assert "lock: no process is writing the run" in out.stdout and "oversight: auto (the gate decides)" in out.stdout
    rows = _status_rows(out.stdout)
    assert rows["iter_000"][1:4] == ["-", "-", "-"] and rows["iter_000"][4].startswith("done")
    for k in ("iter_001", "iter_002"):
        assert [c.split()[0] for c in rows[k][1:5]] == ["done"] * 4 and rows[k][5] == "not promoted", rows[k]
    assert "last gate (iteration 2): refused" in out.stdout
    decision = read_json(run_dir / "iter_002/eval/decision.json")
    assert all(f"  - {r}" in out.stdout for r in decision["reasons"])


def _images(page: str) -> list[tuple[str, bytes]]:
    return [(alt, base64.b64decode(data)) for alt, data in
            re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">', page)]


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and not v.startswith(("data:image/png", "#"))]


def test_report_of_a_two_iteration_run(tiny_run, tmp_path):
    import matplotlib.image

    run_dir, _, _ = tiny_run
    out = _selfreward("report", run_dir, cwd=tmp_path)
    page_path = run_dir / "report.html"
    assert out.returncode == 0 and out.stdout.strip() == f"report: {page_path} (7 plots)", out.stdout + out.stderr
    page = page_path.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, title
    images = _images(page)
    assert len(images) == 7
    for alt, png in images:
        pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert pixels.shape[0] > 150 and pixels.shape[1] > 400 and pixels.std() > 0.02, alt
    parsed = _Tags()
    parsed.feed(page)
    assert parsed.tags <= TAGS and parsed.urls == [], (parsed.tags - TAGS, parsed.urls)
    assert "did not finish" not in page and "No per-step log" not in page
    # the examples show the run's own texts, escaped
    shown = 0
    for k in (1, 2):
        for r in read_jsonl(run_dir / f"iter_00{k}/data_gen/responses.jsonl"):
            if f">{r['id']}: " in page:
                assert f"<pre>{html.escape(r['response'])}</pre>" in page, r["id"]
                shown += 1
    assert shown >= 6
    assert "Iteration 2: gate refused &rarr; not promoted" in page and "no evidence of improvement" in page
    # --out elsewhere: the same page, in an atomic write (no temporary file left)
    other = tmp_path / "elsewhere" / "r.html"
    out = _selfreward("report", run_dir, "--out", other, cwd=tmp_path)
    assert out.returncode == 0 and other.exists() and not list(other.parent.glob(".*tmp"))


def _screenshot(page, shot):
    if shutil.which("chromium") is None:
        message = "Debian's chromium is not installed (.ci/run installs it): the page is not rendered"
        if os.environ.get("SELFREWARD_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--no-first-run", f"--screenshot={shot}", "--window-size=1280,4000", "--hide-scrollbars",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]


def _rendered_plots(shot) -> list[str]:
    """What is missing for a screenshot to show a page of plots: ink, many colours, wide coloured areas."""
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    missing = []
    ink = (pixels < 0.94).any(axis=2)
    if ink.mean() <= 0.04:
        missing.append(f"only {ink.mean():.3f} of the page is not white")
    colours = {tuple(c) for c in (pixels[::4, ::4] * 31).round().astype(int).reshape(-1, 3)}
    if len(colours) <= 100:
        missing.append(f"{len(colours)} distinct colours")
    saturated = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.3
    if saturated.any(axis=1).mean() <= 0.15 or np.count_nonzero(saturated) <= 20000:
        missing.append(f"strong colour on {saturated.any(axis=1).mean():.3f} of the rows")
    return missing


def test_chromium_renders_the_report(tiny_run, tmp_path):
    """The report's plots show in a real browser; the check is calibrated by two controls that must fail it: a
    blank page, and the report's own text with every plot replaced by a broken image."""
    import re

    run_dir, _, _ = tiny_run
    page = tmp_path / "report.html"
    assert _selfreward("report", run_dir, "--out", page, cwd=tmp_path).returncode == 0
    _screenshot(page, tmp_path / "shot.png")
    assert _rendered_plots(tmp_path / "shot.png") == []
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><body></body></html>")
    _screenshot(blank, tmp_path / "blank.png")
    assert _rendered_plots(tmp_path / "blank.png")
    broken = tmp_path / "broken.html"
    html, n = re.subn(r'src="data:image/png;base64,[^"]*"', 'src="missing.png"', page.read_text())
    assert n >= 6
    broken.write_text(html)
    _screenshot(broken, tmp_path / "broken.png")
    assert _rendered_plots(tmp_path / "broken.png")


def test_an_iteration_that_ended_fails_its_stage_and_skips_the_rest(tmp_path, tiny_model_dir, recipes_dir):
    recipe = _recipe(tmp_path, tiny_model_dir, recipes_dir, "strict")
    # instructions of at least 50 words from a 16-token budget: every candidate is too short, data_gen finds no
    # prompt and the iteration ends there
    out = _selfreward("run", recipe, "run.iterations=1", "data_gen.min_words=50", "data_gen.max_rounds=1",
                      cwd=tmp_path)
    assert out.returncode == 0 and "no synthesised instruction passed the filters" in out.stdout, out.stderr
    run_dir = tmp_path / "runs" / "strict"
    out = _selfreward("status", run_dir, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    row = _status_rows(out.stdout)["iter_001"]
    assert row[1:] == ["failed", "skipped", "skipped", "skipped", "not promoted"], row
    assert re.search(r"^  iter_001 data_gen failed: iteration 1: no synthesised instruction passed the filters "
                     r"\(\d+ candidates, rejected: .*too_short", out.stdout, re.M), out.stdout
    assert read_json(run_dir / "iter_001/data_gen/error.json")["type"] == "IterationEnded"
    assert out.stdout.splitlines()[0].startswith(f"run {run_dir}: promoted iteration 0 ")
    assert "last gate" not in out.stdout

    out = _selfreward("report", run_dir, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    page = (run_dir / "report.html").read_text()
    for stage in ("data_gen", "judge", "train", "eval"):
        assert f"No iteration has finished the {stage} stage: nothing to show here." in page, stage
    assert "no synthesised instruction passed the filters" in page
    # M0's baseline still gives its lengths, diversity and capability
    assert [alt for alt, _ in _images(page)] == ["response lengths", "diversity metrics by iteration",
                                                 "win rate and IFEval capability with 95% intervals"]


def test_a_run_with_no_iteration_gives_an_empty_valid_report(tmp_path, recipe_data, write_recipe):
    cfg = config.load(write_recipe(tmp_path / "r.yaml", recipe_data))
    run_dir = loop.prepare_run_dir(cfg, force=False)  # run.yaml and state.json, as `selfreward run` starts
    runlock.release(run_dir)
    out = _selfreward("report", run_dir, cwd=tmp_path)
    assert out.returncode == 0 and "(0 plots)" in out.stdout, out.stderr
    page = (run_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "No iteration has started" in page and "<img" not in page
    parsed = _Tags()
    parsed.feed(page)
    assert parsed.tags <= TAGS
    out = _selfreward("status", run_dir, cwd=tmp_path)
    assert out.returncode == 0 and "(no iteration has started)" in out.stdout
    assert artifacts.read_state(run_dir)["promoted_iteration"] == 0


def test_not_a_run_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    for command in ("report", "status"):
        for target in (tmp_path, tmp_path / "missing"):
            out = _selfreward(command, target, cwd=tmp_path)
            assert out.returncode == 2 and out.stdout == ""
            assert out.stderr.strip() == f"selfreward: error: {target}: not a run directory (no run.yaml/state.json)"
    assert not (tmp_path / "report.html").exists()


def test_damaged_artifacts_are_named_never_silently_reused(tiny_run, tmp_path):
    """On a copy of a finished run: a cut pairs.jsonl stops `run` with one line that names the file and the
    command that redoes the stage, `status` marks the stage damaged, and `--force` redoes exactly that stage with
    the same result; a cut state.json or run.yaml is one line and exit 2 for run and status, nothing changed."""
    import hashlib

    src, _, _ = tiny_run
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(src, run_dir, ignore=shutil.ignore_patterns("run.lock"))
    recipe = shutil.copy(run_dir / "run.yaml", tmp_path / "recipe.yaml")
    pairs = run_dir / "iter_001" / "judge" / "pairs.jsonl"
    good = pairs.read_bytes()
    pairs.write_bytes(good[:100])
    out = _selfreward("run", recipe, f"run.output_dir={tmp_path / 'runs'}", cwd=tmp_path)
    line, = out.stderr.strip().splitlines()
    assert out.returncode == 2 and f"{pairs}: damaged" in line and "--force to redo the judge stage" in line, line
    assert pairs.read_bytes() == good[:100]  # nothing was redone or moved without --force
    row = _status_rows(_selfreward("status", run_dir, cwd=tmp_path).stdout)["iter_001"]
    assert row[2] == "damaged" and row[1].startswith("done"), row
    manifests = {s: (run_dir / "iter_001" / s / "manifest.json").read_bytes() for s in ("data_gen", "judge", "train")}
    out = _selfreward("run", recipe, f"run.output_dir={tmp_path / 'runs'}", "--force", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert pairs.read_bytes() == good  # seeded: the redone judge writes the same pairs
    assert len(list((run_dir / "iter_001").glob("judge.damaged-*"))) == 1
    after = {s: (run_dir / "iter_001" / s / "manifest.json").read_bytes() for s in manifests}
    # only the damaged stage ran again: its manifest is new, the stages before and after it were reused
    assert after["judge"] != manifests["judge"]
    assert after["data_gen"] == manifests["data_gen"] and after["train"] == manifests["train"]
    for name, cut in (("state.json", b'{"promoted_iteration": 1, "hist'), ("run.yaml", b"run:\n  name: [tiny\n")):
        path = run_dir / name
        path.write_bytes(cut)
        def digest():  # the run lock records who last opened the run; everything else must stay as it was
            return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(run_dir.rglob("*"))
                                           if p.is_file() and p.name != "run.lock")).digest()

        before = digest()
        for args in (("status", run_dir), ("run", recipe, f"run.output_dir={tmp_path / 'runs'}")):
            out = _selfreward(*args, cwd=tmp_path)
            assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
            line, = out.stderr.strip().splitlines()
            assert f"{path}: damaged" in line, line
        assert digest() == before
        path.write_bytes(b"")
        shutil.copy(src / name, path)
