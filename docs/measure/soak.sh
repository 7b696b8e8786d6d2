#!/bin/bash
# Memory soak (docs/ROBUSTNESS.md): thousands of small training steps, then
# thousands of inferences, each process's resident memory (VmRSS) sampled
# every second. Run from the repository root after `cargo build --release`:
#   bash docs/measure/soak.sh [steps] [images]
set -euo pipefail
steps=${1:-3000}
images=${2:-2000}
bin=$PWD/target/release/dilaseg
work=$(mktemp -d)
export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}

# Samples the RSS of PID once a second until it exits: "seconds,kib" rows.
sample() {
    local pid=$1 t=0
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status 2>/dev/null || true)
        [ -n "$rss" ] && echo "$t,$rss"
        sleep 1
        t=$((t + 1))
    done
}

summary() {
    # First sample after start-up (10 s), the largest, and the last.
    awk -F, -v what="$1" 'NR == 11 {early = $2} $2 > max {max = $2} {last = $2; n = NR}
        END {printf "%s: %d samples; RSS at 10 s %.1f MB, max %.1f MB, last %.1f MB\n", what, n, early / 1024, max / 1024, last / 1024}'
}

# 12 bundled X-rays at 32x32, seo2018 batch 2: 6 steps per epoch.
epochs=$(( (steps + 5) / 6 ))
"$bin" train --data assets/lung-cxr --preset seo2018 --size 32x32 --epochs "$epochs" \
    --val-fraction 0.25 --out "$work/run" >/dev/null 2>&1 &
sample $! > "$work/train_rss.csv"
summary "train, $((epochs * 6)) steps" < "$work/train_rss.csv"

# The bundled X-rays linked many times over, segmented by the shipped model.
mkdir -p "$work/images"
for i in $(seq 1 "$images"); do
    src=$(ls assets/lung-cxr/images | sed -n "$(( (i - 1) % 16 + 1 ))p")
    ln -s "$PWD/assets/lung-cxr/images/$src" "$work/images/$i.png"
done
"$bin" infer --model assets/seo2018-lung-cxr.safetensors "$work/images" --out "$work/out" >/dev/null 2>&1 &
sample $! > "$work/infer_rss.csv"
summary "infer, $images images" < "$work/infer_rss.csv"
echo "samples in $work"
