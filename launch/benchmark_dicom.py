r"""DICOM decode benchmark (not a test): ms and peak memory per film, and the share of predict.

  python -m launch.benchmark_dicom --source ../shared/data/cxr_dev/COVID/COVID-1021.png
  python -m launch.benchmark_dicom --workdir workdirs/cxr_cpu --n_predict 64

Films: a 1024 px 8-bit JPEG Baseline, 2048 px 16-bit uncompressed, 2048 px 12-bit JPEG 2000
(lossless and 10:1), RLE, JPEG-LS, and the largest one the bad-input suite feeds in (4000 px
16-bit). With --workdir: launch.predict's call on a folder of DICOM films and the share of its wall
time spent decoding them. See jaxcxr/benchmarks/dicom.py.
"""

from absl import flags

from jaxcxr.benchmarks import dicom as benchmark_dicom
from launch import cli

_SOURCE = flags.DEFINE_string('source', '', 'A PNG film resampled to each size; empty: a phantom.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed decodes per film (the median is shown).')
_WORKDIR = flags.DEFINE_string('workdir', '', 'A trained workdir: time launch.predict on DICOMs.')
_N_PREDICT = flags.DEFINE_integer('n_predict', 64, 'DICOM films in the predict timing.')
_ONLY = flags.DEFINE_string('only', '', 'Only films whose name contains this.')
_PREDICT_FILM = flags.DEFINE_enum(
  'predict_film',
  'jpeg_baseline_1024_8bit',
  list(benchmark_dicom.FILMS),
  'Film of the predict timing.',
)


def main(argv) -> int:
  del argv
  return benchmark_dicom.dicom_main(
    source=_SOURCE.value,
    repeats=_REPEATS.value,
    workdir=_WORKDIR.value,
    n_predict=_N_PREDICT.value,
    only=_ONLY.value,
    predict_film=_PREDICT_FILM.value,
  )


if __name__ == '__main__':
  cli.run(main)
