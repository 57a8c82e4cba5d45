#!/usr/bin/env bash
# The runs behind the Bayesian comparison table (docs/bayesian.md): shortened training, one job at a time,
# one thread, nice'd. Usage: bash examples/results/bayes/run_all.sh [train-sinusoid|train-glyphs|eval]
# Sinusoid: each algorithm 5,000 meta-iterations of the paper setting (K=10 training, meta-batch 25),
#   evaluated 5- and 10-shot on the same 600 held-out tasks.
# Glyphs 5-way 1-shot: MAML and FOMAML are docs/classification.md's time-boxed checkpoints (runs/glyphs/5way-*);
#   BMAML and PLATIPUS get the FOMAML time box (9 min) here.
set -u -o pipefail
cd "$(dirname "$0")/../../.."
export OMP_NUM_THREADS=1
BIN=${MAML_EXT:-.venv/bin/maml-ext}
OUT=runs/bayes
RES=examples/results/bayes
SIN="--set train.iterations=5000 --set train.threads=1 --set train.checkpoint_every=1000 --set train.log_every=100"
train_sinusoid() {
  for spec in "maml" "fomaml" "bmaml --set algorithm.particles=5" "platipus --set algorithm.test_samples=5"; do
    local name=${spec%% *}
    echo "== sinusoid $name start $(date +%T)"
    local t0=$(date +%s)
    nice -n 10 $BIN train sinusoid --out $OUT/sinusoid-$name --set algorithm.name=$spec $SIN --no-eval --quiet
    echo "train_wall_s $(( $(date +%s) - t0 ))" > $OUT/sinusoid-$name/wall.txt
  done
}
train_glyphs() {
  for spec in "bmaml --set algorithm.particles=5 --set algorithm.first_order=true" "platipus --set algorithm.test_samples=5"; do
    local name=${spec%% *}
    local out=$OUT/glyphs-$name
    echo "== glyphs $name start $(date +%T)"
    local t0=$(date +%s)
    nice -n 10 timeout 9m $BIN train glyphs-5way --out $out --set algorithm.name=$spec --set train.threads=1 \
        --set train.checkpoint_every=10 --set train.log_every=10 --no-eval --quiet
    echo "train_wall_s $(( $(date +%s) - t0 ))" > $out/wall.txt
  done
}
evaluate() {
  mkdir -p $RES
  for name in maml fomaml bmaml platipus; do
    local run=$OUT/sinusoid-$name
    local e0=$(date +%s)
    nice -n 10 $BIN eval $run && cp $run/eval.json $RES/sinusoid-$name.json
    echo "eval_wall_s $(( $(date +%s) - e0 ))" >> $run/wall.txt
    nice -n 10 $BIN plot $run && cp $run/fits_5shot.png $RES/sinusoid-$name-fits_5shot.png
  done
  for name in maml fomaml; do  # copies: the glyph table's run directories stay as they are
    mkdir -p $OUT/glyphs-$name && cp runs/glyphs/5way-$name/{checkpoint.pt,metrics.jsonl,config.json} $OUT/glyphs-$name/
  done
  for name in maml fomaml bmaml platipus; do
    local e0=$(date +%s)
    local run=$OUT/glyphs-$name
    # The file this evaluation went to (its name follows the settings that differ from the run's).
    nice -n 10 $BIN eval $run --set eval.shots=[1] --set eval.k_query=1 --set eval.steps=3 | tee $run/eval.log \
        && cp "$(sed -n 's/^results: //p' $run/eval.log)" $RES/glyphs-$name.json
    echo "eval_wall_s $(( $(date +%s) - e0 ))" >> $run/wall.txt
  done
}
case "${1:-all}" in
  train-sinusoid) train_sinusoid ;;
  train-glyphs) train_glyphs ;;
  eval) evaluate ;;
  all) train_sinusoid; train_glyphs; evaluate ;;
esac
echo "== done $(date +%T)"
