"""`selfreward report RUN`: one self-contained static HTML page of a run, with plots by iteration.

Contract: reads only the run directory (run.yaml, state.json, each stage's files, which count only once the
stage's manifest exists) and loads no model; writes one HTML file atomically (default `RUN/report.html`).
Its images are PNGs embedded as base64 data and it names no external URL, so it opens anywhere, offline.
A section whose stage did not finish in some iteration says so; a run with no finished iteration gives a
valid page made of those notes. Every text taken from the run (prompts, responses, judgments, reasons) is
HTML-escaped. Figures come from `report_plots` (matplotlib, Agg).
"""
from __future__ import annotations

import base64
import html
import json
import random
import time
from pathlib import Path

from selfreward import artifacts, status
from selfreward import report_plots as plots
from selfreward.config import RecipeError
from selfreward.records import read_json, read_jsonl, write_atomic

EXAMPLES_PER_ITERATION = 3
TEXT_LIMIT = 1500  # characters of one response or judgment shown in the examples


class Run:
    """A run directory's files by iteration: only stages with a manifest are read."""

    def __init__(self, run_dir: Path):
        self.dir = status.open_run(run_dir)
        self.recipe = status.recipe(self.dir)
        self.state = artifacts.read_state(self.dir)
        self.iters = {artifacts.iteration_of(d): d for d in status.iterations(self.dir)}

    def done(self, k: int, stage: str) -> bool:
        return (self.iters[k] / stage / "manifest.json").exists()

    def ks(self, stage: str, first: int = 1) -> list[int]:
        return [k for k in sorted(self.iters) if k >= first and self.done(k, stage)]

    def json(self, k: int, stage: str, name: str):
        path = self.iters[k] / stage / name
        return read_json(path) if self.done(k, stage) and path.exists() else None

    def jsonl(self, k: int, stage: str, name: str) -> list[dict]:
        path = self.iters[k] / stage / name
        return read_jsonl(path) if self.done(k, stage) and path.exists() else []

    def missing(self, stage: str, first: int = 1) -> str:
        """A note naming the iterations in which the stage did not finish."""
        ks = [k for k in sorted(self.iters) if k >= first]
        absent = [k for k in ks if not self.done(k, stage)]
        if not ks or len(absent) == len(ks):
            return f"No iteration has finished the {stage} stage: nothing to show here."
        if absent:
            return f"The {stage} stage did not finish in iteration(s) {', '.join(map(str, absent))}."
        return ""

    def train_history(self, k: int) -> list[dict]:
        """TRL's per-step logs: train/log_history.jsonl, or for older runs the last checkpoint's state."""
        rows = self.jsonl(k, "train", "log_history.jsonl")
        if rows or not self.done(k, "train"):
            return rows
        states = sorted((self.iters[k] / "train" / "checkpoints").glob("checkpoint-*/trainer_state.json"),
                        key=lambda p: int(p.parent.name.split("-")[1]))
        return [h for h in read_json(states[-1]).get("log_history", []) if "loss" in h] if states else []


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and len(value) == 2:  # an interval
        if all(isinstance(v, (int, float)) for v in value):
            return f"[{value[0]:.{digits}f}, {value[1]:.{digits}f}]"
        if all(v is None for v in value):
            return "n/a"
    return str(value)


def img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row, cls in zip(rows, classes or [""] * len(rows)):
        cells = "".join(f"<td>{esc(fmt(v))}</td>" for v in row)
        body.append(f'<tr class="{esc(cls)}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>' if text else ""


def section(anchor: str, title: str, *parts: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


def overview(run: Run) -> str:
    cfg = run.recipe
    rows, classes, failed = [], [], []
    for d, cells, verdict in status.table(run.dir):
        rows.append([d.name, *(f"{c.state} {c.detail}" if c.state == "done" else c.state
                               for c in cells.values()), verdict])
        classes.append("promoted" if verdict == "promoted" else "refused" if verdict == "not promoted" else "")
        failed += [f"{d.name} {name} failed: {c.detail}" for name, c in cells.items()
                   if c.state == "failed" and c.detail]
    facts = [["model (M0)", (cfg.get("model") or {}).get("ref")],
             ["promoted iteration", f"{run.state['promoted_iteration']} ({run.state['adapter'] or 'the base model'})"],
             ["iterations planned", (cfg.get("run") or {}).get("iterations")],
             ["judge", f"{(cfg.get('judge') or {}).get('mode')} mode, {(cfg.get('judge') or {}).get('constitution')}"],
             ["oversight", status.oversight_line(run.dir)], ["lock", status.lock_line(run.dir)]]
    facts_html = "<table>" + "".join(f"<tr><th>{esc(a)}</th><td>{esc(fmt(b))}</td></tr>" for a, b in facts) + "</table>"
    return section("overview", "Overview", facts_html,
                   table(["iteration", *status.STAGES, "outcome"], rows, classes)
                   or note("No iteration has started: this run has no results yet."),
                   "".join(f'<p class="failed">{esc(f)}</p>' for f in failed))


def judge_scores(run: Run) -> str:
    ks = run.ks("judge")
    scores = {k: [j["score"] for j in run.jsonl(k, "judge", "judgments.jsonl") if j.get("score") is not None]
              for k in ks}
    rows = []
    for k in ks:
        s = run.json(k, "judge", "stats.json") or {}
        rows.append([k, s.get("judgments"), s.get("valid_rate"), s.get("score_mean"), s.get("top_score_share"),
                     s.get("tie_rate"), s.get("length_bias_spearman"), (s.get("consistency") or {}).get("kendall_tau"),
                     ", ".join(f"{r}: {n}" for r, n in (s.get("invalid_reasons") or {}).items()) or "none"])
    return section("scores", "Judge scores", note(run.missing("judge")),
                   img(plots.score_histograms(scores), "judge score histograms by iteration"),
                   table(["iteration", "judgments", "valid rate", "mean score", "top-score share", "tie rate",
                          "score~length (Spearman)", "Kendall tau vs previous judge", "invalid"], rows))


def _cut_share(rows: list[dict]) -> float | None:
    return sum(r.get("finish_reason") == "length" for r in rows) / len(rows) if rows else None


def lengths(run: Run) -> str:
    responses = {k: [r["n_tokens"] for r in run.jsonl(k, "data_gen", "responses.jsonl") if "n_tokens" in r]
                 for k in run.ks("data_gen")}
    probes = {k: [r["n_tokens"] for r in run.jsonl(k, "eval", "probes.jsonl") if "n_tokens" in r]
              for k in run.ks("eval", first=0)}
    rows = []
    for k in sorted(set(responses) | set(probes)):
        r, p = responses.get(k, []), probes.get(k, [])
        rows.append([k, sum(r) / len(r) if r else None, _cut_share(run.jsonl(k, "data_gen", "responses.jsonl")),
                     sum(p) / len(p) if p else None, _cut_share(run.jsonl(k, "eval", "probes.jsonl"))])
    png = plots.length_boxes([("responses sampled for training (data_gen)", responses),
                              ("answers to the fixed probes (eval; 0 = M0)", probes)])
    return section("lengths", "Response lengths", note(run.missing("data_gen")), img(png, "response lengths"),
                   table(["iteration", "mean response tokens", "cut by max_tokens", "mean probe tokens",
                          "probes cut by max_tokens"], rows))


DIVERSITY = [("distinct2", "distinct-2 (higher: more varied)"), ("repetition4", "repeated 4-grams within"),
             ("cross_overlap4", "4-gram overlap across responses"),
             ("semantic_similarity", "mean pairwise embedding cosine")]


def diversity(run: Run) -> str:
    metrics = {k: run.json(k, "eval", "metrics.json") or {} for k in run.ks("eval", first=0)}
    series = {label: {k: m.get(key) for k, m in metrics.items()} for key, label in DIVERSITY}
    rows = [[k, *(m.get(key) for key, _ in DIVERSITY), m.get("kl_per_token")] for k, m in sorted(metrics.items())]
    return section("diversity", "Diversity", note(run.missing("eval", first=0)),
                   img(plots.metric_lines(series, "share / cosine"), "diversity metrics by iteration"),
                   table(["iteration", *(key for key, _ in DIVERSITY), "KL per token vs M(k-1)"], rows))


def win_and_capability(run: Run) -> str:
    metrics = {k: run.json(k, "eval", "metrics.json") or {} for k in run.ks("eval", first=0)}
    later = {k: m for k, m in metrics.items() if k >= 1}
    win = {k: (m.get("win_rate"), m.get("win_rate_ci95")) for k, m in later.items()}
    gain = {k: (m.get("capability_gain"), m.get("capability_gain_ci95")) for k, m in later.items()}
    gain_m0 = {k: (m.get("capability_gain_vs_m0"), m.get("capability_gain_vs_m0_ci95")) for k, m in later.items()}
    accuracy = {k: m["capability"] for k, m in metrics.items() if isinstance(m.get("capability"), dict)}
    floors = [m["capability_floor"].get("prompt_strict") for m in metrics.values()
              if isinstance(m.get("capability_floor"), dict)]
    bound = (((run.recipe.get("eval") or {}).get("gate") or {}).get("min_win_rate", 0.5))
    png = plots.win_and_capability(win, gain, gain_m0, accuracy, floors[-1] if floors else None, bound)
    rows = [[k, m.get("win_rate"), m.get("win_rate_ci95"), m.get("win_rate_n"), (m.get("capability") or {}).get(
        "prompt_strict"), m.get("capability_gain"), m.get("capability_gain_ci95"), m.get("capability_gain_vs_m0"),
        m.get("capability_gain_vs_m0_ci95")] for k, m in sorted(metrics.items())]
    return section("win-rate", "Win rate and capability", note(run.missing("eval")),
                   img(png, "win rate and IFEval capability with 95% intervals"),
                   table(["iteration", "win rate vs M(k-1)", "95% CI", "pairs judged", "IFEval prompt strict",
                          "gain vs M(k-1)", "95% CI", "gain vs M0", "95% CI"], rows), _capability_splits(later))


def _capability_splits(later: dict[int, dict]) -> str:
    """Where a capability gain comes from: probes a short answer fails or passes, trained and held-out types."""
    rows = []
    for k, m in sorted(later.items()):
        rows.append([k, m.get("capability_gain_hard"), m.get("capability_gain_hard_ci95"),
                     m.get("capability_gain_easy"), m.get("capability_gain_easy_ci95"),
                     m.get("capability_length_ratio")])
        for name, label in (("trained", "trained types"), ("held_out", "held-out types")):
            s = (m.get("capability_splits") or {}).get(name)
            if s and s.get("accuracy") is not None:
                rows[-1] += [f"{fmt(s['accuracy'])} (floor {fmt(s['floor'])}, n={s['n_instructions']})",
                             f"{fmt(s['gain'])} {fmt(s['gain_ci95'])}"]
            else:
                rows[-1] += ["n/a", "n/a"]
    if not rows:
        return ""
    return ('<h3>Where the capability gain comes from</h3><p class="meta">Gains vs M(k-1) with 95% intervals that '
            'resample base prompts. "Hard" probes are those the constant answer "OK." fails: a gain on the easy ones '
            'alone can be a model saying less. Type splits are instruction-level strict accuracy on the instruction '
            'types the run trains on and holds out.</p>'
            + table(["iteration", "gain, hard probes", "95% CI", "gain, easy probes", "95% CI",
                     "answer length vs M(k-1)", "trained types", "gain", "held-out types", "gain"], rows))


def _accuracy(v: dict) -> str:
    unjudged = f", {v['unjudged']} unjudged" if v.get("unjudged") else ""
    return f"{fmt(v.get('accuracy'))} {fmt(v.get('ci95'))} of {v.get('n')}{unjudged}"


def known_answer(run: Run) -> str:
    by_kind: dict[str, dict] = {}
    found: dict[int, dict] = {}
    for k in run.ks("judge"):
        ka = (run.json(k, "judge", "stats.json") or {}).get("known_answer") or {}
        if not ka.get("n") and not ka.get("unjudged"):
            continue  # no checks in this iteration (judge.known_answer_pairs: 0)
        found[k] = {**(ka.get("by_corruption") or {}), "all": ka}
        for kind, v in found[k].items():
            by_kind.setdefault(kind, {})[k] = (v.get("accuracy"), v.get("ci95"))
    kinds = sorted(by_kind, key=lambda kind: (kind == "all", kind))
    rows = [[k, *(_accuracy(v[kind]) if kind in v else "n/a" for kind in kinds)] for k, v in sorted(found.items())]
    empty = "" if rows or not run.ks("judge") else "The judge stage ran without known-answer checks " \
                                                    "(judge.known_answer_pairs: 0)."
    return section("known-answer", "Known-answer accuracy of the judge", note(run.missing("judge")), note(empty),
                   img(plots.known_answer(by_kind), "known-answer accuracy by corruption type"),
                   '<p class="meta">The share of checks in which the judge scored the original response above '
                   'its corrupted copy, with its 95% interval and the number of checks.</p>' if rows else "",
                   table(["iteration", *kinds], rows), _verifier_agreement(run))


def _verifier_agreement(run: Run) -> str:
    """The self-judge against the IFEval verifier on the model's own responses (judge.verify: ifeval)."""
    rows = []
    for k in run.ks("judge"):
        v = (run.json(k, "judge", "stats.json") or {}).get("verifier")
        if v:
            a = v["agreement"]
            rows.append([k, v["rule"] + (" (shuffled control)" if v.get("control") == "shuffled" else ""),
                         v["prompt_strict"], f"{fmt(a['accuracy'])} {fmt(a['ci95'])}", a["n"], a["ties"],
                         ", ".join(f"{s} {n}" for s, n in v["decided_by"].items() if n) or "none"])
    if not rows:
        return ""
    return ('<h3>The judge against the verifier</h3><p class="meta">On prompts with verifiable instructions, the '
            'share of (passing, failing) response pairs to one prompt in which the self-judge scored the passing '
            'response higher (0.5 is chance; ties count as not higher), with its 95% interval.</p>'
            + table(["iteration", "reward rule", "responses passing (prompt strict)", "judge agrees with verifier",
                     "pairs", "ties", "pairs decided by"], rows))


def pairs(run: Run) -> str:
    counts, rows = {}, []
    for k in run.ks("judge"):
        s = run.json(k, "judge", "stats.json") or {}
        counts[k] = {"pairs": s.get("pairs", 0), **{r: n for r, n in (s.get("dropped") or {}).items() if n}}
        rows.append([k, s.get("prompts"), s.get("pairs"), s.get("pair_yield"), s.get("margin_mean"),
                     s.get("truncated_pair_share")])
    return section("pairs", "Pair yield", note(run.missing("judge")),
                   img(plots.pair_yield(counts), "pairs and dropped prompts by iteration"),
                   table(["iteration", "prompts", "pairs", "pair yield", "mean margin", "truncated-pair share"], rows))


TRAIN_CURVES = [("loss", "DPO loss"), ("rewards/margins", "reward margin (chosen - rejected)"),
                ("rewards/accuracies", "reward accuracy")]


def training(run: Run) -> str:
    history = {k: run.train_history(k) for k in run.ks("train")}
    rows = []
    for k in run.ks("train"):
        m = (run.json(k, "train", "manifest.json") or {}).get("metrics", {})
        rows.append([k, m.get("pairs"), m.get("steps"), m.get("loss_first"), m.get("loss_last"),
                     m.get("reward_accuracy_mean"), m.get("reward_margin_last"), m.get("reference")])
    gaps = [k for k, h in history.items() if not h]
    return section("training", "DPO training", note(run.missing("train")),
                   note(f"No per-step log in iteration(s) {', '.join(map(str, gaps))}." if gaps else ""),
                   img(plots.training_curves(history, TRAIN_CURVES), "DPO loss and reward margins over steps"),
                   table(["iteration", "pairs", "steps", "first loss", "last loss", "mean reward accuracy",
                          "last reward margin", "reference"], rows))


def gate(run: Run) -> str:
    parts = []
    for k in run.ks("eval"):
        d = run.json(k, "eval", "decision.json")
        if d is None:
            continue
        outcome_path = run.iters[k] / "outcome.json"
        outcome = read_json(outcome_path) if outcome_path.exists() else None
        verdict = ("awaiting a human decision" if outcome is None else
                   "promoted" if outcome["promoted"] else "not promoted")
        rows = [["improvement", i.get("metric"), i.get("value"), i.get("ci95"), f"95% low > {fmt(i.get('bound'))}",
                 "significant" if i.get("significant") else "not significant", i.get("reason")]
                for i in d.get("improvement", [])]
        rows += [["guard", g.get("metric"), g.get("value"), g.get("ci95"), f"{g.get('op', '')} {fmt(g.get('bound'))}",
                  "pass" if g.get("passed") else "FAIL", g.get("reason")] for g in d.get("guards", [])]
        classes = ["pass" if r[5] in ("pass", "significant") else "fail" for r in rows]
        reasons = (outcome or {}).get("reasons") or d.get("reasons", [])
        parts.append(f"<h3>Iteration {k}: gate {'passed' if d.get('passed') else 'refused'} &rarr; {esc(verdict)}"
                     f"</h3><ul>{''.join(f'<li>{esc(r)}</li>' for r in reasons)}</ul>"
                     + table(["kind", "metric", "value", "95% CI", "bound", "result", "reason"], rows, classes))
    return section("gate", "Gate decisions", note(run.missing("eval")), *parts)


def _examples_of(run: Run, k: int) -> str:
    prompts = {p["id"]: p for p in run.jsonl(k, "data_gen", "prompts.jsonl")}
    responses = run.jsonl(k, "data_gen", "responses.jsonl")
    judgments: dict[str, list[dict]] = {}
    for j in run.jsonl(k, "judge", "judgments.jsonl"):
        judgments.setdefault(j["response_id"], []).append(j)
    roles = {}
    for p in run.jsonl(k, "judge", "pairs.jsonl"):
        prov = p.get("provenance", {})
        roles.update({prov.get("chosen_id"): "chosen", prov.get("rejected_id"): "rejected"})
    ids = sorted(prompts)
    paired = [i for i in ids if any(roles.get(r["id"]) for r in responses if r["prompt_id"] == i)]
    rng = random.Random(f"{(run.recipe.get('run') or {}).get('seed', 0)}-{k}")
    picked = sorted(rng.sample(paired or ids, min(EXAMPLES_PER_ITERATION, len(paired or ids))))
    blocks = []
    for pid in picked:
        items = []
        for r in (r for r in responses if r["prompt_id"] == pid):
            js = judgments.get(r["id"], [])
            scores = [j["score"] for j in js if j.get("score") is not None]
            verdict = (f"score {sum(scores) / len(scores):.2f}" if scores else
                       f"invalid ({', '.join(sorted({str(j.get('invalid')) for j in js}))})" if js else "not judged")
            role = roles.get(r["id"], "")
            raw = js[0].get("raw", "") if js else ""
            items.append(f'<div class="response {esc(role)}"><p class="meta">{esc(r["id"])}: {esc(verdict)}'
                         f'{f" &mdash; <b>{esc(role)}</b>" if role else ""}, {esc(r.get("n_tokens"))} tokens'
                         f'{", cut by max_tokens" if r.get("finish_reason") == "length" else ""}</p>'
                         f'<pre>{esc(r.get("response", "")[:TEXT_LIMIT])}</pre>'
                         f'<p class="meta">judge\'s raw output:</p><pre class="judgment">{esc(str(raw)[:TEXT_LIMIT])}</pre></div>')
        blocks.append(f'<div class="example"><p class="meta">prompt {esc(pid)}</p>'
                      f'<pre class="prompt">{esc(prompts[pid].get("instruction", ""))}</pre>{"".join(items)}</div>')
    return f"<h3>Iteration {k}</h3>" + "".join(blocks)


def examples(run: Run) -> str:
    ks = run.ks("data_gen")
    parts = [_examples_of(run, k) for k in ks]
    unjudged = [k for k in ks if not run.done(k, "judge")]
    return section("examples", "Examples", note(run.missing("data_gen")),
                   note(f"Iteration(s) {', '.join(map(str, unjudged))} have responses but no finished judge stage."
                        if unjudged else ""), *parts)


STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;
color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
nav a{margin-right:14px}img{max-width:100%;display:block;margin:8px 0}
table{border-collapse:collapse;margin:8px 0;font-size:.86em}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top;white-space:nowrap}td:last-child{white-space:normal}th{background:#f3f3f3}tr.promoted td,tr.pass td{background:#eef8ee}
tr.refused td,tr.fail td{background:#fbeeee}.note{color:#8a6d00;font-style:italic}.failed{color:#b00020}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:6px 8px;margin:2px 0 8px;font-size:.85em}
.example{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:12px 0}.meta{margin:4px 0;color:#555;
font-size:.85em}.response{margin-left:18px}.response.chosen pre{border-left:4px solid #2e7d32}
.response.rejected pre{border-left:4px solid #c62828}pre.prompt{background:#eef3fb}
.response pre.judgment{border-left:none;background:#fafaf0;color:#444}
"""
SECTIONS = [overview, judge_scores, lengths, diversity, win_and_capability, known_answer, pairs, training, gate,
            examples]


def render(run: Run) -> str:
    body = "".join(build(run) for build in SECTIONS)
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("overview", "Overview"), ("scores", "Scores"), ("lengths", "Lengths"), ("diversity", "Diversity"),
        ("win-rate", "Win rate"), ("known-answer", "Known answers"), ("pairs", "Pairs"), ("training", "Training"),
        ("gate", "Gate"), ("examples", "Examples")))
    name = (run.recipe.get("run") or {}).get("name", run.dir.name)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>selfreward report: {esc(name)}'
            f'</title><style>{STYLE}</style></head><body><h1>selfreward run {esc(name)}</h1>'
            f'<p class="meta">{esc(run.dir.resolve())} &middot; report written {esc(time.strftime("%Y-%m-%d %H:%M:%S %Z"))}'
            f'</p><nav>{nav}</nav>{body}</body></html>\n')


def write(run_dir: Path, out: Path | None = None) -> tuple[Path, int]:
    """Render RUN's report to `out` (default RUN/report.html); returns the path and the number of images."""
    run = Run(Path(run_dir))
    page = render(run)
    path = Path(out) if out is not None else run.dir / "report.html"
    try:
        write_atomic(path, page)
    except OSError as e:
        raise RecipeError(f"cannot write the report to {path}: {e.strerror or e}") from None
    return path, page.count("<img ")
