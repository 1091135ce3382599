"""`selfreward run | validate | status | report | recipes | approve | reject | eval | judge preview`: the command line.

Contract: a user mistake prints one line `selfreward: error: ...` and exits 2 before any model loads; a
preempted run exits 75 (requeue); nothing here imports a stage package (the loop and `evaluate` do).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from selfreward.launch import exit_code_of


def _quiet_libraries() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def cmd_validate(args) -> int:
    from selfreward import config, loop, models

    cfg = config.load(args.recipe, args.overrides, offline_hub_ok=True)
    loop.check_recipe(cfg, args.recipe)
    try:
        notes = [models.hub_note(cfg.model.ref), models.check_chat_template(cfg.model.ref)]
    except models.ModelRefError as e:
        raise config.RecipeError(f"{args.recipe}: model.ref: {e}") from None
    for note in filter(None, notes):
        print(f"{args.recipe}: model.ref: {note}")
    print(f"{args.recipe}: ok ({cfg.run.iterations} iterations, model {cfg.model.ref}, "
          f"{cfg.data_gen.num_prompts} prompts x {cfg.data_gen.n_responses} responses, run dir {cfg.run_dir()})")
    return 0


def cmd_run(args) -> int:
    from selfreward import config, loop
    from selfreward.stopping import install_preemption_handlers

    cfg = config.load(args.recipe, args.overrides)
    loop.check_recipe(cfg, args.recipe)  # TRL validates the DPO arguments before anything loads
    install_preemption_handlers()
    loop.run(cfg, force=args.force)
    return 0


def _run_dir(arg: str) -> Path:
    """A run directory, or a recipe (a file, or a shipped recipe's name): its run directory."""
    from selfreward import config, status

    run_dir = Path(arg)
    if run_dir.is_file() or not run_dir.exists() and arg in config.shipped_recipes():
        run_dir = config.load(arg).run_dir()
    return status.open_run(run_dir)


def cmd_status(args) -> int:
    from selfreward import artifacts, status

    run_dir = _run_dir(args.run)
    state = artifacts.read_state(run_dir)
    print(f"run {run_dir}: promoted iteration {state['promoted_iteration']} "
          f"({state['adapter'] or state['model']})")
    print(f"oversight: {status.oversight_line(run_dir)}")
    print(f"lock: {status.lock_line(run_dir)}")
    rows = [[d.name, *(f"{c.state} {c.detail}" if c.state == "done" else c.state for c in cells.values()), verdict]
            for d, cells, verdict in status.table(run_dir)]
    header = ["iteration", *status.STAGES, "outcome"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if not rows:
        print("(no iteration has started)")
    for d, cells, _ in status.table(run_dir):
        for name, c in cells.items():
            if c.state == "failed" and c.detail:
                print(f"  {d.name} {name} failed: {c.detail}")
    gate = status.last_gate(run_dir)
    if gate is not None:
        k, decision = gate
        print(f"last gate (iteration {k}): {'passed' if decision['passed'] else 'refused'}")
        for reason in decision["reasons"]:
            print(f"  - {reason}")
    return 0


def cmd_report(args) -> int:
    from selfreward import report

    path, images = report.write(_run_dir(args.run), Path(args.out) if args.out else None)
    print(f"report: {path.resolve()} ({images} plots)")
    return 0


def cmd_recipes(args) -> int:
    from selfreward import config

    shipped = config.shipped_recipes()
    if args.action is None:
        width = max(map(len, shipped), default=0)
        for name, (_, description) in shipped.items():
            print(f"{name:<{width}}  {description}")
        return 0
    if args.action != "cp" or len(args.names) != 2:
        raise config.RecipeError("usage: selfreward recipes [cp NAME DEST [--force]]")
    name, dest = args.names
    copies = _recipe_copies(config.find_recipe(name), Path(dest))
    clash = [str(d) for _, d in copies if d.exists()]
    if clash and not args.force:
        raise config.RecipeError(f"{clash[0]} already exists (pass --force to overwrite)")
    for src, dst in copies:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    print(f"copied {name} to {copies[0][1]} (with {len(copies) - 1} file(s) it names); "
          f"run it with: selfreward run {copies[0][1]}")
    return 0


def cmd_judge_preview(args) -> int:
    """Render the judge prompt for a few responses, run the judge, print raw outputs, scores and validity."""
    from selfreward import config, constitution, engine as engines, judging
    from selfreward.records import read_jsonl

    cfg = config.load(args.recipe, args.overrides)
    con = constitution.load(cfg.judge.constitution)
    made = sorted(cfg.run_dir().glob("iter_[0-9][0-9][0-9]/data_gen/responses.jsonl"))
    engine = engines.for_config(cfg)
    if made:  # the latest iteration's responses to its own prompts
        prompts = {p["id"]: p["instruction"] for p in read_jsonl(made[-1].with_name("prompts.jsonl"))}
        items = [{"id": r["id"], "instruction": prompts[r["prompt_id"]], "response": r["response"]}
                 for r in read_jsonl(made[-1])[:args.n]]
        source = str(made[-1])
    else:  # M0 answers the first probes
        probes = read_jsonl(cfg.eval.probes)[:args.n]
        outs = engine.generate([engines.Request([{"role": "user", "content": p["prompt"]}], 0) for p in probes],
                               engines.Sampling(temperature=0.0, max_tokens=cfg.eval.max_tokens))
        items = [{"id": p["id"], "instruction": p["prompt"], "response": o.text} for p, o in zip(probes, outs)]
        source = f"M0's greedy answers to {cfg.eval.probes}"
    jc = cfg.judge
    print(f"constitution {con.name} v{con.version} ({con.scoring}, scores {con.score_min}-{con.score_max}, "
          f"sha256 {con.sha256[:12]}); mode {jc.mode}" + (f" ({jc.format}, k={jc.num_judgments}, structured="
                                                          f"{jc.structured})" if jc.mode == "sampled" else ""))
    print(f"responses: {source}")
    unit, principles = con.units()[0]
    fmt = "score_first" if jc.mode == "logprob" else jc.format
    print(f"\n--- judge prompt for {items[0]['id']}" + (f" (principle {unit})" if unit else "") + " ---")
    print(judging.render(con, principles, items[0]["instruction"], items[0]["response"], fmt))
    judged = judging.judge_items(engine, con, jc, items, None, (cfg.run.seed, "preview"))
    for item in items:
        print(f"\n--- {item['id']}: {item['response'][:160]!r} ---")
        for j in (j for j in judged if j["response_id"] == item["id"]):
            verdict = f"score {j['score']:.2f}" if j["score"] is not None else f"INVALID ({j['invalid']})"
            mass = f", mass {j['score_mass']:.2f}" if "score_mass" in j else ""
            print(f"  [{j['judgment']}] {verdict}{mass}; raw: {j['raw']!r}")
    valid = sum(j["score"] is not None for j in judged)
    print(f"\n{valid}/{len(judged)} judgments valid")
    return 0


def cmd_review(args) -> int:
    from selfreward import oversight

    decided = oversight.review(Path(args.run), args.iteration, args.command == "approve", args.reason, args.by)
    print(f"iteration {args.iteration} {decided['decision']} by {decided['decided_by']} at {decided['decided_at']}; "
          f"`selfreward run` continues the loop")
    return 0


def cmd_eval(args) -> int:
    from selfreward import evaluate

    r = evaluate.evaluate_ifeval(Path(args.run), args.iteration, Path(args.ifeval), args.max_tokens)
    print(f"IFEval on iteration {args.iteration} ({r['prompts']} prompts, {r['instructions']} instructions), greedy:")
    for key in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
        print(f"  {key.replace('_', '-level ', 1):<26} {r[key]:.4f}   (constant answer {r['floor'][key]:.4f})")
    return 0


def _recipe_copies(recipe: Path, dest: Path) -> list[tuple[Path, Path]]:
    """The recipe file and every file it names by a relative path, with where each goes."""
    import yaml

    from selfreward.config import DATASET_FIELDS, PATH_FIELDS

    target = dest if dest.suffix in (".yaml", ".yml") else dest / recipe.name
    copies = [(recipe, target)]
    data = yaml.safe_load(recipe.read_text()) or {}
    named = [data.get(s, {}).get(k) for s, k in PATH_FIELDS] + [data.get("launch", {}).get("accelerate_config")]
    named += [src.get("path") for s, k in DATASET_FIELDS if isinstance(src := (data.get(s) or {}).get(k), dict)]
    for rel in named:
        if isinstance(rel, str) and not Path(rel).is_absolute() and (recipe.parent / rel).is_file():
            copies.append((recipe.parent / rel, target.parent / rel))
    return copies


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfreward", description="Self-rewarding language model loop.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) the loop of a recipe (a file, or a shipped recipe's name)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.beta=0.05")
    p.add_argument("--force", action="store_true", help="redo stages whose config changed")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("validate", help="check a recipe (and build its DPOConfig) without loading a model")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(fn=cmd_validate)
    p = sub.add_parser("status", help="show the stages and gate decisions of a run directory (or a recipe's)")
    p.add_argument("run")
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("report", help="write a run's HTML report with plots by iteration (RUN/report.html)")
    p.add_argument("run", help="a run directory, or a recipe (its run directory)")
    p.add_argument("--out", default=None, help="where to write the page (default: RUN/report.html)")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("recipes", help="list the shipped recipes; `recipes cp NAME DEST` copies one for editing")
    p.add_argument("action", nargs="?", choices=["cp"])
    p.add_argument("names", nargs="*", metavar="NAME DEST")
    p.add_argument("--force", action="store_true", help="overwrite existing files when copying")
    p.set_defaults(fn=cmd_recipes)
    for name in ("approve", "reject"):
        p = sub.add_parser(name, help=f"{name} iteration K's gated candidate (run.oversight: manual)")
        p.add_argument("run")
        p.add_argument("--iteration", type=int, required=True)
        p.add_argument("--reason", required=True)
        p.add_argument("--by", default=None, help="who decides (default: the current user)")
        p.set_defaults(fn=cmd_review)
    p = sub.add_parser("eval", help="run an IFEval-format file against an iteration's model (greedy)")
    p.add_argument("run")
    p.add_argument("--iteration", type=int, required=True, help="0 = M0")
    p.add_argument("--ifeval", required=True, help="JSONL with key, prompt, instruction_id_list, kwargs")
    p.add_argument("--max-tokens", type=int, default=None, help="default: the run's eval.capability_max_tokens")
    p.set_defaults(fn=cmd_eval)
    p = sub.add_parser("judge", help="`judge preview RECIPE --n 5`: run the judge on a few responses and show it")
    judge = p.add_subparsers(dest="judge_command", required=True)
    p = judge.add_parser("preview", help="render the judge prompt, run the judge, print raw outputs and scores")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--n", type=int, default=5, help="responses to judge (default 5)")
    p.set_defaults(fn=cmd_judge_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _quiet_libraries()
    return exit_code_of(args.fn, args, "run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
