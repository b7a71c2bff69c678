#!/usr/bin/env bash
# Submit a curation run: an array of N partition tasks and the merge that waits for all of them.
#
#   slurm/submit_curation.sh 64 input.paths=[/data/raw] out_dir=/data/curated clip_scores.checkpoint=/ckpt/clip.bin
#
# Extra sbatch flags go in SBATCH_ARGS, e.g. SBATCH_ARGS="--partition=cpu --account=vid".
# Rerunning the same command after a failure resumes: finished partitions and stages are skipped.
set -euo pipefail
N=${1:?usage: submit_curation.sh N_PARTITIONS [liveditor-curate overrides...]}
shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p logs
array=$(sbatch --parsable ${SBATCH_ARGS:-} --array=0-$((N - 1)) --export=ALL,PARTITIONS="$N" "$here/curate.sbatch" "$@")
merge=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency=afterok:"$array" --export=ALL,MERGE=1,PARTITIONS="$N" \
    --job-name=liveditor-curate-merge "$here/curate.sbatch" "$@")
echo "partitions: job array $array ($N tasks); merge (dedup, shard, report): job $merge"
