#!/usr/bin/env bash
# Issue 5's GPU checks in one call, on a machine with its own torch and no network (the lent H100):
# seconds to 80/85/90/94% validation accuracy and the test accuracy, for the airbench-style recipes
# (Muon and SGD) and for cifar-fast, on CIFAR-10 decoded there from the JPEG archive; then predict and
# evaluate on the GPU.
#
#   here:   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/    (.data is git-ignored)
#   there:  bash bench/gpu_check.sh .data/cifar10-jpeg.tar.gz                  (carry .data)
#
# The JSON results are copied to $OUT when it is set. About 4 minutes on an H100 after the decode.
set -euo pipefail
archive=${1:-.data/cifar10-jpeg.tar.gz}
export PYTHONPATH=src PYTHONUNBUFFERED=1 DEEPSTEP_DATA=${DEEPSTEP_DATA:-/tmp/deepstep-data}
python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
for recipe in cifar-airbench-muon cifar-airbench cifar-fast; do
    python3 -m bench.run --only time_to_accuracy --recipe "$recipe" --cifar "$archive"
done
if [ -n "${OUT:-}" ]; then
    cp bench/results/*.json "$OUT"/
fi
# predict and evaluate on the GPU (device auto, precision auto), on a 1-epoch lenet run and 64 test JPEGs
out=${OUT:-/tmp}
python3 -m deepstep train --data "$archive" --model lenet --epochs 1 --out /tmp/gpu-lenet --quiet
find "$DEEPSTEP_DATA" -name '*.jpg' -path '*/test/*' | sort > /tmp/gpu-photos.txt  # no head in the pipe: pipefail
sed -i '65,$d' /tmp/gpu-photos.txt
xargs -a /tmp/gpu-photos.txt python3 -m deepstep predict /tmp/gpu-lenet --precision auto --top-k 1 --json \
    > "$out/gpu-predict.json" 2> "$out/gpu-predict.log"
python3 -m deepstep evaluate /tmp/gpu-lenet --split val --precision auto | tee "$out/gpu-evaluate.txt"
