"""`python -m data_gen RUN_DIR ITERATION [--force]`: the stage in its own process (launch.mode: subprocess)."""
from data_gen.stage import run
from selfreward.artifacts import stage_main

if __name__ == "__main__":
    stage_main(run, "data_gen")
