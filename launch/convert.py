r"""Converts torchvision ImageNet weights into a jaxcxr converted-weights directory.

  python -m launch.convert --arch densenet201 --source torchvision --out weights/densenet201
  python -m launch.convert --arch resnet101 \
      --source https://download.pytorch.org/models/resnet101-63fe2227.pth --out weights/resnet101
  python -m launch.convert --arch vgg19 --source /downloads/vgg19-dcbb9e9d.pth --out weights/vgg19

`--source` is a `.pth` / `.safetensors` file, an http(s) URL (cached in $JAXCXR_WEIGHTS_DIR or
~/.cache/jaxcxr/weights), or `torchvision` for the arch's official IMAGENET1K_V1 URL. Then train
with `--config.model.pretrained=weights/densenet201`.
"""

from absl import app, flags

from jaxcxr.models import weights
from jaxcxr.training import errors
from launch import cli

_ARCH = flags.DEFINE_string('arch', None, 'Model name (jaxcxr.models.NAMES), e.g. densenet201.')
_SOURCE = flags.DEFINE_string(
  'source', None, '.pth/.safetensors file, http(s) URL or "torchvision".'
)
_OUT = flags.DEFINE_string('out', None, 'Output directory (Orbax checkpoint + meta.json).')
_CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'Download cache (default $JAXCXR_WEIGHTS_DIR).')
_SHA256 = flags.DEFINE_string('sha256', None, 'Expected full sha256 of the source file.')
flags.mark_flags_as_required(['arch', 'source', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  source = _SOURCE.value
  if source == 'torchvision':
    source = f'torchvision:{_ARCH.value}'
  try:
    summary = weights.convert(
      _ARCH.value, source, _OUT.value, cache_dir=_CACHE_DIR.value, expected_sha256=_SHA256.value
    )
  except (ValueError, OSError) as e:  # WeightsError and unknown arch are ValueErrors
    cli.fail(e, errors.EXIT_USAGE)
  print(
    f'{summary["arch"]}: {summary["num_params"]:,} parameters, '
    f'{summary["num_batch_stats"]:,} BatchNorm statistics, '
    f'{summary["num_classes"]} classes; sha256 {summary["sha256"][:12]}...'
  )
  print(f'Wrote {summary["out"]}  (use --config.model.pretrained={summary["out"]})')


if __name__ == '__main__':
  cli.run(main)
