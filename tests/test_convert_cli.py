"""`python -m launch.convert`: a torch-saved .pth -> converted directory -> same logits as torch;
errors exit non-zero with a message."""

import os
import pathlib

import jax
import numpy as np
import torch

from jaxcxr import models
from jaxcxr.models import weights
from tests import warm
from tests.models.torch_reference import randomized_torchvision

REPO = pathlib.Path(__file__).resolve().parents[1]


def _convert(*args):
  return warm.run_module('launch.convert', args, env=os.environ, cwd=REPO, timeout=300)


def test_pth_to_converted_dir_matches_torch(tmp_path):
  tv = randomized_torchvision('resnet18')
  source = tmp_path / 'resnet18-random.pth'
  torch.save(tv.state_dict(), source)
  out_dir = tmp_path / 'converted'
  run = _convert('--arch=resnet18', f'--source={source}', f'--out={out_dir}')
  assert run.returncode == 0, run.stderr
  assert 'resnet18: 11,689,512 parameters, 9,600 BatchNorm statistics, 1000 classes' in run.stdout
  assert f'--config.model.pretrained={out_dir}' in run.stdout

  arch, variables = weights.load_converted(out_dir)
  assert arch == 'resnet18'
  meta = weights.read_meta(out_dir)
  assert meta['source'] == str(source) and len(meta['sha256']) == 64
  x = np.random.RandomState(1).randn(2, 96, 96, 3).astype(np.float32)
  with torch.no_grad():
    ref = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  logits = jax.jit(models.build(arch, 1000).apply)(variables, x)
  assert float(np.abs(np.asarray(logits) - ref).max()) <= 1e-4


def test_errors_exit_nonzero_with_message(tmp_path):
  source = tmp_path / 'r18.pth'
  torch.save(randomized_torchvision('resnet18').state_dict(), source)
  run = _convert('--arch=resnet34', f'--source={source}', f'--out={tmp_path / "o"}')
  assert run.returncode == 2
  assert "error: State dict does not match 'resnet34'" in run.stderr
  assert "looks like a 'resnet18' state dict" in run.stderr
  assert not (tmp_path / 'o').exists()

  run = _convert('--arch=resnet7', '--source=torchvision', f'--out={tmp_path / "o"}')
  assert run.returncode == 2 and "error: Unknown model 'resnet7'; choose one of:" in run.stderr

  run = _convert('--arch=resnet18', f'--out={tmp_path / "o"}')
  assert run.returncode != 0 and 'source' in run.stderr
