"""`python -m judge RUN_DIR ITERATION [--force]`: the stage in its own process (launch.mode: subprocess)."""
from judge.stage import run
from selfreward.artifacts import stage_main

if __name__ == "__main__":
    stage_main(run, "judge")
