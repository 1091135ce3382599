"""`python -m selfreward.eval RUN_DIR ITERATION`: the stage's work in its own process (launch.mode: subprocess)."""
from selfreward.lifecycle import stage_main
from selfreward.eval.stage import STAGE

if __name__ == "__main__":
    stage_main(STAGE)
