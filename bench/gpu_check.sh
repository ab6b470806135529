#!/usr/bin/env bash
# Issue 5's GPU checks in one call, on a machine with its own torch and no network (the lent H100/H200):
# seconds to 80/85/90/94% validation accuracy and the test accuracy for the airbench-style recipes
# (Muon and SGD) and for cifar-fast, on CIFAR-10 decoded there from the JPEG archive; the Muon recipe
# again on all 50,000 training images (--val-split 0, as airbench94 trains), then predict and
# evaluate on the GPU, then the Muon recipe under torch.compile, if time is left.
#
#   here:   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/    (.data is git-ignored)
#   there:  bash bench/gpu_check.sh .data/cifar10-jpeg.tar.gz [check|sweep]    (carry .data)
#
# `sweep` instead trains the Muon recipe longer and wider, cifar-fast at width 64 for 50 epochs
# and cifar-airbench for 30, to see how far this data goes.
#
# Each step runs under a limit, and the whole under BUDGET seconds (default 500): a step that fails
# or runs out of time is reported and the next one runs. The log, each step's results (one JSON
# object a line) and predict's and evaluate's output go to $OUT (or /tmp/gpu-check) as they come.
set -uo pipefail
archive=${1:-.data/cifar10-jpeg.tar.gz}
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1 DEEPSTEP_DATA=${DEEPSTEP_DATA:-/tmp/deepstep-data}
exec > >(tee -a "$out/gpu-check.log") 2>&1
deadline=$((SECONDS + ${BUDGET:-500}))
marker=$(mktemp)

step() {  # step SECONDS COMMAND...: run it for at most SECONDS (less if the budget is nearly spent)
    local limit=$1 start=$SECONDS rc
    shift
    ((limit > deadline - SECONDS)) && limit=$((deadline - SECONDS))
    if ((limit < 20)); then
        echo "== skipped, budget spent: $*"
        return
    fi
    echo "== $* (at most ${limit} s)"
    timeout "$limit" "$@"
    rc=$?
    echo "== rc $rc in $((SECONDS - start)) s"
    find bench/results -maxdepth 1 -name '*.json' -newer "$marker" 2>/dev/null | sort | while read -r f; do
        python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$f" >>"$out/results.jsonl"
    done
    touch "$marker"
}

lenet_check() {  # predict and evaluate on the GPU (device auto, precision auto): a 1-epoch lenet, 64 test JPEGs
    python3 -m deepstep train --data "$archive" --model lenet --epochs 1 --out /tmp/gpu-lenet --quiet || return
    find "$DEEPSTEP_DATA" -name '*.jpg' -path '*/test/*' | sort | sed -n 1,64p >/tmp/gpu-photos.txt
    xargs -a /tmp/gpu-photos.txt python3 -m deepstep predict /tmp/gpu-lenet --precision auto --top-k 1 --json \
        >"$out/gpu-predict.json" || return
    python3 -m deepstep evaluate /tmp/gpu-lenet --split val --precision auto | tee "$out/gpu-evaluate.txt"
}

export -f lenet_check
export archive out
nvidia-smi -L
python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
ttc="python3 -m bench.run --only time_to_accuracy --cifar $archive --recipe"
if [ "${2:-check}" = check ]; then
    step 200 $ttc cifar-airbench-muon # decodes the archive first (cached for the later steps)
    step 100 $ttc cifar-airbench-muon --val-split 0
    step 90 bash -c lenet_check
    step 100 $ttc cifar-airbench
    step 150 $ttc cifar-fast
    step 150 $ttc cifar-airbench-muon --val-split 0 --compile
else # sweep: how far longer and wider runs go on this data
    step 90 $ttc cifar-airbench-muon --epochs 16
    step 60 $ttc cifar-airbench-muon --epochs 32
    step 90 $ttc cifar-airbench-muon --epochs 24 --model-arg width=128
    step 120 $ttc cifar-airbench-muon --epochs 48 --model-arg width=128
    step 120 $ttc cifar-fast --epochs 50 --model-arg width=64
    step 60 $ttc cifar-airbench --epochs 30
fi
rm -f "$marker"
echo "== done in $SECONDS s"
