#!/usr/bin/env bash
# The time-boxed glyph runs behind the README table: each training is stopped by `timeout`
# (checkpoints every 25 iterations), then its last checkpoint is evaluated 1-shot and 5-shot on
# 600 test tasks. One job at a time, 1 thread. Usage: bash examples/glyphs/run_shortened.sh
set -u
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
BIN=${MAML_EXT:-.venv/bin/maml-ext}
run() {  # name config algorithm minutes eval_steps
  local name=$1 cfg=$2 algo=$3 minutes=$4 steps=$5 out=runs/glyphs/$1
  echo "== $name start $(date +%T)"
  local t0=$(date +%s)
  timeout ${minutes}m $BIN train $cfg --out $out --set algorithm.name=$algo --set train.threads=1 \
      --set train.checkpoint_every=25 --set train.log_every=25 --quiet
  echo "train_wall_s $(( $(date +%s) - t0 ))" > $out/wall.txt
  for k in 1 5; do
    local e0=$(date +%s)
    $BIN eval $out --set eval.shots=[$k] --set eval.k_query=$k --set eval.steps=$steps && cp $out/eval.json $out/eval-${k}shot.json
    echo "eval_${k}shot_wall_s $(( $(date +%s) - e0 ))" >> $out/wall.txt
  done
  echo "== $name done $(date +%T)"
}
run 5way-maml glyphs-5way maml 18 3
run 5way-fomaml glyphs-5way fomaml 9 3
run 5way-pretrain glyphs-5way pretrain 3 3
run 20way-maml glyphs-20way maml 14 5
run 20way-fomaml glyphs-20way fomaml 7 5
run 20way-pretrain glyphs-20way pretrain 3 5
echo "== bench start $(date +%T)"
${PYTHON:-.venv/bin/python} benchmarks/bench_classification.py --threads 1 --min-time 3 --write
echo "== all done $(date +%T)"
