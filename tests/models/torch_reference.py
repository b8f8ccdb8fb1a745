"""torchvision reference models for the parity tests (test-only: imports torch)."""

import numpy as np
import torch
import torchvision


def randomized_torchvision(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
  """torchvision model with random weights, BN affine params and BN running statistics.

  The running statistics are first calibrated on a random 224 px batch (as training would), then
  randomised per channel (mean shifted by N(0, 0.05) std, var scaled by U(0.9, 1.1)): purely random
  statistics blow ResNet-101's activations up to ~1e7 (and U(0.7, 1.3) still to ~1e2), where a
  1e-4 absolute tolerance only measures float32 rounding of huge numbers. Each ResNet residual
  branch's last BN gets gamma ~ U(0.1, 0.5), as in trained ResNets: with U(0.5, 1.5) the random
  ResNet-101 amplifies float32 rounding so much that torch float32 itself is 5e-4 off its own
  float64 result (`test_float64_parity` shows the conversion itself is exact).
  Linear layers get He-normal weights instead of N(0, 0.01), which would leave the VGG logits ~0.03.
  """
  torch.manual_seed(seed)
  model = getattr(torchvision.models, name)(**kwargs)
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  branch_ends = {
    id(m.bn2) for m in model.modules() if isinstance(m, torchvision.models.resnet.BasicBlock)
  }
  branch_ends |= {
    id(m.bn3) for m in model.modules() if isinstance(m, torchvision.models.resnet.Bottleneck)
  }
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.Linear):
        m.weight.normal_(0.0, (2.0 / m.in_features) ** 0.5)
        m.bias.normal_(0.0, 0.1)
    for m in bns:
      m.weight.uniform_(*((0.1, 0.5) if id(m) in branch_ends else (0.5, 1.5)))
      m.bias.normal_(0.0, 0.1)
      m.momentum = None  # cumulative average: the stats of the calibration batch
    if bns:
      model.train()(torch.randn(2, 3, 224, 224))
    for m in bns:
      m.running_mean.add_(torch.randn_like(m.running_mean) * 0.05 * m.running_var.sqrt())
      m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.9, 1.1))
      m.momentum = 0.1
  return model.eval()


def _cam_module(name: str, model: torch.nn.Module) -> tuple[torch.nn.Module, bool]:
  """The torch module whose output is the Grad-CAM map, and whether a ReLU follows (DenseNet)."""
  if name.startswith('vgg'):
    relus = [m for m in model.features if isinstance(m, torch.nn.ReLU)]
    return relus[-1], False  # the last conv ReLU, right before the final max-pool
  if name.startswith('resnet'):
    return model.layer4, False
  return model.features, True  # relu(norm5(...)) is applied in DenseNet.forward


def torch_forward(name: str, model: torch.nn.Module, x_nhwc: np.ndarray):
  """(logits, Grad-CAM map as NHWC) from torch, via a forward hook."""
  captured = {}
  module, relu = _cam_module(name, model)
  handle = module.register_forward_hook(lambda m, i, o: captured.update(fmap=o))
  with torch.no_grad():
    logits = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
  handle.remove()
  fmap = captured['fmap'].clone()
  if relu:
    fmap = torch.relu(fmap)
  return logits.numpy(), fmap.numpy().transpose(0, 2, 3, 1)
