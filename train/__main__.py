"""`python -m train RUN_DIR ITERATION`: what `accelerate launch` runs on every rank."""
from selfreward.artifacts import stage_main
from train.stage import run_local


def _run(cfg, iter_dir, force):
    return run_local(cfg, iter_dir)


if __name__ == "__main__":
    stage_main(_run, "train")
