#!/usr/bin/env bash
# Submit a whole curation run to SLURM and return at once: a job array of N partition tasks
# (probe, shots, filters, clip_scores, pairs), then a merge job (dedup, shard, report) that starts
# only when every array task has succeeded (--dependency=afterok). Nothing polls on the submit host.
#
#   slurm/curate_submit.sh 64 input.paths=[/data/raw] out_dir=/data/curated clip_scores.checkpoint=/ckpt/clip.bin
#   slurm/curate_submit.sh --sbatch "--partition=cpu --account=vid" --max-parallel 128 64 input.paths=[...] ...
#   slurm/curate_submit.sh --array-sbatch "--partition=gpu --gres=gpu:1" 64 ... pairs=generate ...   # one GPU per task
#
# Options (before N): --sbatch "<flags>" extra sbatch flags for both jobs; --array-sbatch "<flags>" for the
# partition array only (e.g. a GPU per task for pairs=generate: the merge needs none); --max-parallel P
# runs at most P array tasks at once; --merge-cpus C CPUs of the merge job (shard writing uses them).
# Everything after N goes to liveditor-curate as Hydra overrides. Prints the two job ids.
# After a failure, run the same command again: finished partitions, stages and chunks are skipped.
set -euo pipefail

usage="usage: curate_submit.sh [--sbatch FLAGS] [--array-sbatch FLAGS] [--max-parallel P] [--merge-cpus C] N_PARTITIONS [liveditor-curate overrides...]"
extra="" array_extra="" max_parallel="" merge_cpus=8
while [[ $# -gt 0 ]]; do
    case "$1" in
        --sbatch) extra=${2:?$usage}; shift 2 ;;
        --array-sbatch) array_extra=${2:?$usage}; shift 2 ;;
        --max-parallel) max_parallel=${2:?$usage}; shift 2 ;;
        --merge-cpus) merge_cpus=${2:?$usage}; shift 2 ;;
        -h|--help) echo "$usage"; exit 0 ;;
        *) break ;;
    esac
done
n=${1:?$usage}
shift
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
    echo "curate_submit.sh: N_PARTITIONS must be a positive integer, got '$n' ($usage)" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p logs  # curate.sbatch writes logs/curate-<array>_<task>.out relative to the submit folder
array_spec="0-$((n - 1))${max_parallel:+%$max_parallel}"
# shellcheck disable=SC2086  # $extra and $array_extra are lists of sbatch flags
array=$(sbatch --parsable $extra $array_extra --array="$array_spec" --export=ALL,PARTITIONS="$n" "$here/curate.sbatch" "$@")
array=${array%%;*}  # --parsable prints "id" or "id;cluster"
# shellcheck disable=SC2086
merge=$(sbatch --parsable $extra --dependency=afterok:"$array" --kill-on-invalid-dep=yes --cpus-per-task="$merge_cpus" \
    --job-name=liveditor-curate-merge --output=logs/curate-merge-%j.out --export=ALL,MERGE=1,PARTITIONS="$n" \
    "$here/curate.sbatch" "$@")
merge=${merge%%;*}
echo "submitted: partitions job array $array ($n tasks); merge (dedup, shard, report) job $merge after all succeed"
echo "watch: squeue -j $array,$merge    logs: logs/curate-${array}_*.out logs/curate-merge-${merge}.out"
