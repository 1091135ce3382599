#!/bin/bash
# selfreward: submit a recipe as a chain of per-stage jobs (--dependency=afterok), each with its own shape.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: slurm/submit.sh [options] RECIPE [key.path=value ...]

Submits slurm/stage.sbatch once per stage: the baseline, then data_gen, judge, train and eval of every
iteration, each job depending on the previous one (afterok; a failed job cancels the rest of the chain).
Generation, judging and eval run on one node with model.tensor_parallel_size of its GPUs (vLLM tensor
parallel); training runs on --train-nodes nodes with --gpus-per-node GPUs each (one `accelerate launch` per
node through srun). The recipe's launch.gpus_per_node and launch.train_nodes are the defaults of both options.

options:
  --partition P        sbatch --partition for every job        (or set SBATCH_PARTITION)
  --account A          sbatch --account for every job          (or set SBATCH_ACCOUNT)
  --time T             sbatch --time for every job (e.g. 04:00:00)
  --gpus-per-node G    GPUs per node (default: the recipe's launch.gpus_per_node; 0: CPU);
                       model.tensor_parallel_size must divide G
  --train-nodes N      nodes of each train job (default: the recipe's launch.train_nodes); N > 1 needs
                       launch.mode: subprocess and an accelerate config in the recipe
  --sbatch-args "..."  extra sbatch options for every job (e.g. "--qos=high --constraint=a100")
  --dry-run            print the sbatch commands instead of submitting them
  -h, --help           this text
(each option takes its value as the next word or after "=": --partition gpu or --partition=gpu)

environment: SELFREWARD_PYTHON  python of the venv selfreward is installed in (default: python3 on PATH)
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"

partition="" account="" time_limit="" gpus="" train_nodes="" extra="" dry=0
while (( $# )); do
  case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;  # --partition=gpu, as sbatch takes it
    -h|--help) usage; exit 0 ;;
    --partition) partition=${2:?}; shift 2 ;;
    --account) account=${2:?}; shift 2 ;;
    --time) time_limit=${2:?}; shift 2 ;;
    --gpus-per-node) gpus=${2:-}; shift 2 || die "--gpus-per-node needs a value" ;;
    --train-nodes) train_nodes=${2:-}; shift 2 || die "--train-nodes needs a value" ;;
    --sbatch-args) extra=${2:-}; shift 2 || die "--sbatch-args needs a value" ;;
    --dry-run) dry=1; shift ;;
    --) shift; break ;;
    -*) die "unknown option $1; see --help" ;;
    *) break ;;
  esac
done
(( $# >= 1 )) || die "missing RECIPE (a recipe file or a shipped recipe's name); see --help"
[[ -z $gpus || $gpus =~ ^[0-9]+$ ]] || die "--gpus-per-node: expected a number of GPUs, got '$gpus'"
[[ -z $train_nodes || $train_nodes =~ ^[0-9]+$ ]] || die "--train-nodes: expected a number of nodes, got '$train_nodes'"
[[ -z $train_nodes ]] || (( train_nodes >= 1 )) || die "--train-nodes: $train_nodes nodes; a train job needs at least 1"
(( dry )) || command -v sbatch >/dev/null || die "sbatch not found: run this on a SLURM login node (or --dry-run)"

find_python
# validates the recipe (with its own shape), and the tensor-parallel size against --gpus-per-node if given
offline=()
(( dry )) && offline=(--offline-hub-ok)  # a dry run downloads nothing: a hub id is checked for its form
info=$(SLURM_GPUS_ON_NODE=$gpus "$PY" -m selfreward.jobs info --shell "${offline[@]}" "$@") || exit $?
eval "$(grep -E '^[A-Z_]+=' <<<"$info")"  # only the NAME=value lines
gpus=${gpus:-$GPUS_PER_NODE} train_nodes=${train_nodes:-$TRAIN_NODES}
if (( train_nodes > 1 )) && [[ $LAUNCH_MODE != subprocess || -z $ACCELERATE_CONFIG ]]; then
  die "--train-nodes $train_nodes needs launch.mode: subprocess and launch.accelerate_config in the recipe"
fi

common=(--parsable --kill-on-invalid-dep=yes --export=ALL,SELFREWARD_SLURM_DIR=$here)
[[ -n $partition ]] && common+=(--partition="$partition")
[[ -n $account ]] && common+=(--account="$account")
[[ -n $time_limit ]] && common+=(--time="$time_limit")
read -r -a extra_args <<<"$extra"
common+=("${extra_args[@]}")
gen=(--nodes=1)
(( gpus > 0 )) && gen+=(--gpus-per-node="$TP")  # vLLM uses tensor_parallel_size GPUs; the rest would idle
train=(--nodes="$train_nodes")
(( gpus > 0 )) && train+=(--gpus-per-node="$gpus")
(( dry )) || mkdir -p "$RUN_DIR/logs"

previous=""
submit() {  # submit STAGE ITERATION SHAPE...
  local stage=$1 k=$2 id
  shift 2
  local cmd=(sbatch "${common[@]}" "$@" --job-name="sr-$RUN_NAME-$k-$stage" --output="$RUN_DIR/logs/%x-%j.out")
  [[ -n $previous ]] && cmd+=(--dependency="afterok:$previous")
  cmd+=("$here/stage.sbatch" "$RECIPE_ARGS_0" "$stage" "$k" "${overrides[@]}")
  if (( dry )); then printf '%q ' "${cmd[@]}"; echo; id="DRY$k$stage"
  else id=$("${cmd[@]}") || die "sbatch failed for $stage of iteration $k (jobs submitted so far: ${submitted:-none})"
       id=${id%%;*}; echo "iteration $k $stage: job $id"; fi
  previous=$id
  submitted="${submitted:-}${submitted:+ }$id"
}
RECIPE_ARGS_0=$1
shift
overrides=("$@")
submit baseline 0 "${gen[@]}"
for (( k = 1; k <= ITERATIONS; k++ )); do
  submit data_gen "$k" "${gen[@]}"
  submit judge "$k" "${gen[@]}"
  submit train "$k" "${train[@]}"
  submit eval "$k" "${gen[@]}"
done
(( dry )) || echo "submitted $(wc -w <<<"$submitted") jobs for $RUN_DIR; logs in $RUN_DIR/logs; cancel all: scancel $submitted"
