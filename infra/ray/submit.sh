#!/usr/bin/env bash
# Submit the training job of one run date to a running Ray cluster (its dashboard address) and wait for
# it; exits non-zero if the job fails. The checkout is shipped as the job's working_dir (.gitignore'd
# paths such as .venv, lake and models stay behind); the cluster's nodes bring the Python packages.
#   infra/ray/submit.sh RUN_DATE [extra train arguments / key=value ...]
#   RAY_ADDRESS=http://ray-head:8265 WARMSTART_LAKE=/data/lake infra/ray/submit.sh 2011-12-09 --workers 2 --gpu
set -euo pipefail
cd "$(dirname "$0")/../.."
run_date="${1:?usage: infra/ray/submit.sh RUN_DATE [train args ...]}"; shift
RAY="${RAY:-.venv/bin/ray}"
exec "$RAY" job submit \
  --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" \
  --working-dir . \
  --submission-id "warmstart-train-${run_date//-/}-$(date -u +%H%M%S)" \
  --runtime-env-json '{"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}' \
  -- "${RAY_PYTHON:-python}" jobs/train.py --run-date "$run_date" --lake "${WARMSTART_LAKE:-$PWD/lake}" \
     --ray-address auto "$@"
