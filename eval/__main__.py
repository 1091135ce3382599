"""`python -m eval RUN_DIR ITERATION [--force]`: the stage in its own process (launch.mode: subprocess)."""
from eval.stage import run
from selfreward.artifacts import stage_main

if __name__ == "__main__":
    stage_main(run, "eval")
