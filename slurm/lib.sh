# Shared by loop.sbatch, stage.sbatch and submit.sh (sourced, not run). Contract:
# - die MSG: one line `selfreward-slurm: error: MSG` on stderr, exit code 2 (a user mistake).
# - find_python: $SELFREWARD_PYTHON (default: python3 on PATH) must import selfreward.jobs (and so its dependencies); sets PY.
# - run_forwarding CMD...: runs CMD in the background with its output appended to $LOG (and this job's output),
#   forwards USR1/USR2/TERM/INT to it (a trap; the batch shell is the only process SLURM's `--signal=B:...`
#   reaches), waits for it to exit (not just for the signal), and sets RC to its exit code.
# - requeue_or_exit: exit code 75 (the Python side stopped for preemption) becomes `scontrol requeue`.

EXIT_PREEMPTED=75  # selfreward/exits.py: the code the Python side exits with when preempted

log() {  # to this job's output, and to the run's log once there is one
  printf 'selfreward-slurm: %s\n' "$*" >&2
  if [[ -n ${LOG:-} ]]; then printf 'selfreward-slurm: %s\n' "$*" >>"$LOG"; fi
}
die() { printf 'selfreward-slurm: error: %s\n' "$*" >&2; exit 2; }

find_python() {
  PY=${SELFREWARD_PYTHON:-python3}
  command -v "$PY" >/dev/null 2>&1 || die "python not found: $PY (set SELFREWARD_PYTHON=/path/to/venv/bin/python)"
  "$PY" -c 'import selfreward.jobs' 2>/dev/null \
    || die "$PY cannot import selfreward (set SELFREWARD_PYTHON to the python of the venv it is installed in)"
}

_forward() {
  log "SIG$1 received at $(date +%s.%N); forwarding to pid $CHILD"
  kill -s "$1" "$CHILD" 2>/dev/null || true
}

run_forwarding() {
  # the tees ignore stop signals: SLURM signals every process of the job, and a dead tee would break the
  # child's output while it is saving what it has
  "$@" > >(trap '' TERM USR1 USR2 INT; exec tee -a "$LOG") 2> >(trap '' TERM USR1 USR2 INT; exec tee -a "$LOG" >&2) &
  CHILD=$!
  for sig in USR1 USR2 TERM INT; do trap "_forward $sig" "$sig"; done
  RC=0
  while :; do
    wait "$CHILD" && RC=0 || RC=$?
    # a trapped signal interrupts `wait` (status > 128) while the child still runs: wait again
    kill -0 "$CHILD" 2>/dev/null || break
  done
  for sig in USR1 USR2 TERM INT; do trap - "$sig"; done
  log "exit code $RC at $(date +%s.%N)"
}

requeue_or_exit() {
  if [[ $RC -eq $EXIT_PREEMPTED && -n ${SLURM_JOB_ID:-} ]]; then
    log "preempted: requeueing job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0})"
    scontrol requeue "$SLURM_JOB_ID" || { log "scontrol requeue failed"; exit "$RC"; }
    exit 0
  fi
  exit "$RC"
}

