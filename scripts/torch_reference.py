r"""torchvision reference for `python -m launch.benchmark --torch`: same model, batch, step.

Why a standalone script: library code (`jaxcxr/`) never imports torch, and the reference should be
readable on its own, with nothing from jaxcxr between torch and the numbers. The launcher passes
`[python, scripts/torch_reference.py]` to `jaxcxr.benchmarks.compare`, which starts it as a
worker and drives it step by step, alternating with the JAX worker (protocol in
jaxcxr/benchmarks/worker.py):

  python scripts/torch_reference.py --setup='{"arch": "resnet18", "image_size": 128, "batch": 16}'

then one JSON request per stdin line. What it times, per key `<part>/<dtype>`:
- train: `model.train()`, zero_grad, uint8 -> ImageNet-normalised float input (as jaxcxr's
  `to_model_input`, inside the step), forward, cross-entropy, backward, SGD(momentum=0.9) step.
- eval: `model.eval()` forward under `torch.inference_mode()`.
- bfloat16: forward (and loss) under `torch.autocast('cpu', dtype=torch.bfloat16)` (oneDNN uses
  AMX-bf16 where the CPU has it); backward and the update stay as autocast leaves them.
Threads: `torch.set_num_threads(cores)`. `channels_last` in the setup switches the memory format.
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
import torchvision

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class TorchArch:
  """One torchvision model and its train / eval steps."""

  def __init__(self, setup: dict):
    threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    torch.set_num_threads(threads)
    overrides = dict(setup.get('overrides', {}))
    for jax_only in ('scan_chunk', 'cpu_options'):  # JAX-side compile options: same model
      overrides.pop(jax_only, None)
    self.device = torch.device(setup.get('device', 'cpu'))  # scripts/torch_accel_reference.py
    self.model = getattr(torchvision.models, setup['arch'])(num_classes=3, **overrides)
    self.fmt = torch.channels_last if setup.get('channels_last') else torch.contiguous_format
    self.model = self.model.to(self.device, memory_format=self.fmt)
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
    b, s = int(setup['batch']), int(setup['image_size'])
    gen = torch.Generator().manual_seed(0)
    self.images = torch.randint(0, 256, (b, 1, s, s), dtype=torch.uint8, generator=gen).to(
      self.device
    )
    self.labels = torch.randint(0, 3, (b,), generator=gen).to(self.device)
    self.mean = torch.tensor(_MEAN, device=self.device).view(1, 3, 1, 1)
    self.std = torch.tensor(_STD, device=self.device).view(1, 3, 1, 1)
    self.info = {
      'torch': torch.__version__,
      'torchvision': torchvision.__version__,
      'torch_threads': threads,
      'channels_last': bool(setup.get('channels_last')),
    }
    parts = setup.get('parts', ['train', 'eval'])
    self.keys = [
      f'{p}/{d}'
      for p in ('train', 'eval')
      if p in parts
      for d in setup.get('dtypes', ['float32'])
      if d in ('float32', 'bfloat16')
    ]

  def _input(self) -> torch.Tensor:
    x = (self.images.float().expand(-1, 3, -1, -1) / 255.0 - self.mean) / self.std
    return x.contiguous(memory_format=self.fmt)

  def _autocast(self, dtype: str):
    return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=(dtype == 'bfloat16'))

  def train(self, dtype: str) -> None:
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    with self._autocast(dtype):
      loss = torch.nn.functional.cross_entropy(self.model(self._input()), self.labels)
    loss.backward()
    self.opt.step()

  def eval(self, dtype: str) -> None:
    self.model.eval()
    with torch.inference_mode(), self._autocast(dtype):
      self.model(self._input())

  def sync(self) -> None:
    """Waits for queued GPU work (CPU steps are synchronous)."""
    if self.device.type == 'cuda':
      torch.cuda.synchronize()

  def run(self, key: str) -> float:
    part, dtype = key.split('/')
    t = time.perf_counter()
    getattr(self, part)(dtype)
    self.sync()
    return time.perf_counter() - t


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--setup', required=True, help='JSON: arch, image_size, batch, ...')
  args = parser.parse_args()
  replies = os.fdopen(os.dup(sys.stdout.fileno()), 'w', buffering=1)
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not break the protocol
  arch = TorchArch(json.loads(args.setup))
  replies.write(json.dumps({'ready': arch.info, 'keys': arch.keys}) + '\n')
  for line in sys.stdin:
    req = json.loads(line)
    if req['op'] == 'step':
      replies.write(json.dumps({'s': arch.run(req['key'])}) + '\n')
    elif req['op'] == 'finish':
      rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
      replies.write(json.dumps({'done': {'peak_rss_mb': rss}}) + '\n')
      return
    else:
      raise ValueError(f'unknown request {req!r}')


if __name__ == '__main__':
  main()
