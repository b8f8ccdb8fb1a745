#!/usr/bin/env bash
# Accelerator benchmark (issue #14 item 5): bf16, 224 px train and eval images/s of vgg19,
# resnet101 and densenet201 (plus resnet50, the model of NVIDIA's A100 figure) at the largest
# batch that fits (batch sizes doubled, then bisected, out-of-memory errors caught), with the
# train step's compile time, next to published PyTorch AMP training figures:
#   timm on an RTX 3090: resnet101 748, densenet201 563, vgg19 457 img/s;
#   NVIDIA DeepLearningExamples ResNet-50 on an A100, AMP: 2,470 img/s;
# then, where torch sees a GPU, torchvision AMP on the same GPU at the same batch sizes, eager and
# under torch.compile (scripts/torch_accel_reference.py; its JSON beside ours, *_torch.json).
#
#   scripts/accelerator_bench.sh                 # on the GPU/TPU VM, from anywhere
#   scripts/accelerator_bench.sh --smoke         # CPU-sized check of the same path (tests use it)
#   OUT=gpu.json scripts/accelerator_bench.sh --archs=resnet50 --steps=20   # extra flags pass on
#
# Record the printed table in docs/PERFORMANCE.md with the device it names.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-.}"
[[ -d "$out" ]] && out="$out/accelerator_bench_$(date +%Y%m%d_%H%M%S).json"   # OUT may be a folder
if [[ "${1:-}" == "--smoke" ]]; then
  shift
  exec python -m launch.benchmark --accelerator --archs=cnn_small --image_size=16 \
      --start_batch=2 --max_batch=4 --bisect=1 --out="$out" "$@"
fi
python -c 'import jax; print("devices:", jax.devices())'
python -m launch.benchmark --accelerator --archs=vgg19,resnet101,densenet201,resnet50 \
    --image_size=224 --accel_dtype=bfloat16 --steps=10 --out="$out" "$@"
# torchvision AMP on the same GPU at the batch sizes the JAX side found (where torch sees a GPU).
if python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  specs=$(python -c 'import json, sys; print(",".join("%s:%d" % (r["arch"], r["batch"]) for r in json.load(open(sys.argv[1]))["rows"]))' "$out")
  python scripts/torch_accel_reference.py --archs="$specs" --image_size=224 --steps=10 \
      --modes=eager,compiled --out="${out%.json}_torch.json"
fi
