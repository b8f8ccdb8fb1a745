r"""torchvision on the same accelerator as `launch.benchmark --accelerator`: the PyTorch AMP side.

The published figures that `jaxcxr.benchmarks.accel` prints beside ours come from other GPUs;
this measures torchvision on *this* device, at the batch sizes the JAX run used, with the same step
(uint8 grey images -> ImageNet-normalised 3-channel input inside the step, forward, cross-entropy,
backward, SGD momentum 0.9: scripts/torch_reference.py's `TorchArch`, on the GPU) under
`torch.autocast('cuda', torch.bfloat16)`, channels_last, `cudnn.benchmark`. Median of `--steps`
timed steps after warm-up, CUDA-synchronised. `--modes=eager,compiled` adds the peer a PyTorch user
who cares about speed runs: the same model under `torch.compile` (default mode; its first train and
eval calls, which compile, are timed apart as `compile_s`).

  python scripts/torch_accel_reference.py --archs=resnet50:256,vgg19:256 --out=torch_gpu.json

Standalone on purpose (library code never imports torch). scripts/accelerator_bench.sh runs it
after the JAX side when torch sees a GPU.
"""

import argparse
import json
import statistics

import torch
import torchvision
from torch_reference import TorchArch  # the same model set-up and step as the CPU comparison


def measure(
  arch: str,
  batch: int,
  image_size: int,
  steps: int,
  dtype: str,
  device: str = 'cuda',
  compiled: bool = False,
) -> dict:
  """Train and eval images/s of one torchvision model on `device` ('cpu' only for smoke tests),
  eager or under `torch.compile`."""
  model = TorchArch(
    {
      'arch': arch,
      'batch': batch,
      'image_size': image_size,
      'channels_last': True,
      'device': device,
    }
  )
  if compiled:
    model.model = torch.compile(model.model)
  cuda = model.device.type == 'cuda'
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  compile_s = {}

  def img_s(part):
    compile_s[part] = model.run(f'{part}/{dtype}')  # first call: compiles when `compiled`
    for _ in range(3):
      getattr(model, part)(dtype)
    model.sync()
    return batch / statistics.median(model.run(f'{part}/{dtype}') for _ in range(steps))

  row = {
    'arch': arch,
    'batch': batch,
    'mode': 'compiled' if compiled else 'eager',
    'train_img_s': img_s('train'),
    'eval_img_s': img_s('eval'),
    'first_call_s': compile_s,
    'peak_mem_mb': torch.cuda.max_memory_allocated() / 2**20 if cuda else float('nan'),
  }
  model = None  # drops the last reference (img_s's closure shares it) before emptying the cache
  if cuda:
    torch.cuda.empty_cache()
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--archs', required=True, help='arch:batch,... (torchvision names)')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--dtype', default='bfloat16', choices=['bfloat16', 'float32'])
  parser.add_argument('--modes', default='eager', help='eager and/or compiled (torch.compile)')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  torch.backends.cudnn.benchmark = True
  header = {
    'device': torch.cuda.get_device_name(0),
    'torch': torch.__version__,
    'torchvision': torchvision.__version__,
    'dtype': args.dtype,
    'image_size': args.image_size,
    'steps': args.steps,
  }
  print(
    f'{header["device"]}, torch {header["torch"]}, autocast {args.dtype}, '
    f'{args.image_size} px, channels_last, median of {args.steps} steps\n'
  )
  print(
    '| arch | batch | mode | torch train img/s | torch eval img/s | first train call s | peak MiB |'
  )
  print('|---|---|---|---|---|---|---|')
  rows = []
  for spec in args.archs.split(','):
    arch, batch = spec.split(':')
    for mode in args.modes.split(','):
      if mode not in ('eager', 'compiled'):
        parser.error(f'--modes: {mode!r} is not eager or compiled')
      r = measure(
        arch, int(batch), args.image_size, args.steps, args.dtype, compiled=(mode == 'compiled')
      )
      rows.append(r)
      print(
        f'| {arch} | {batch} | {mode} | {r["train_img_s"]:.1f} | {r["eval_img_s"]:.1f} | '
        f'{r["first_call_s"]["train"]:.1f} | {r["peak_mem_mb"]:.0f} |',
        flush=True,
      )
      if args.out:  # after every row: a run cut short by its time limit keeps what it measured
        with open(args.out, 'w') as f:
          json.dump({'header': header, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
