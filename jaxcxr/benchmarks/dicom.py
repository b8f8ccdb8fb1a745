"""DICOM decode speed and memory per film, and its share of `launch.predict` (not a test).

`dicom_main(...)` prints
1. per encoding (a chest film resampled to the size, written with pydicom's / Pillow's / GDCM's
   encoders): file MB, decode ms per film (median of `repeats`, wall and the process's CPU: a
   decoder's own threads count; GDCM's JPEG 2000 uses several), and
   the peak memory the decode added (resident set: freed heap trimmed, VmHWM reset through
   /proc/self/clear_refs; tracemalloc's peak of Python / NumPy allocations beside it, which
   leaves out the C decoders' own buffers);
2. with `workdir`: `inference.predict_workdir` on a folder of DICOM films (one of `FILMS`, by
   default the 1024 px JPEG Baseline film, copied `n_predict` times), wall seconds, and the share
   of it spent in `dicom.read_film` (timed by wrapping it; summed over the reader threads, so
   near or over 100 % means decoding is the bottleneck).
Each line says the load average: other processes on the machine share the cores.
"""

import contextlib
import ctypes
import gc
import io
import os
import platform
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pydicom.encaps
import pydicom.uid
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset

from jaxcxr.data import dicom, images, phantom
from jaxcxr.evaluation import inference

# name -> (side, bits stored, transfer syntax, extra keyword): the three films first, then
# the other encodings and the largest film the bad-input suite feeds in.
FILMS = {
  'jpeg_baseline_1024_8bit': (1024, 8, pydicom.uid.JPEGBaseline8Bit),
  'uncompressed_2048_16bit': (2048, 16, pydicom.uid.ExplicitVRLittleEndian),
  'jpeg2000_lossless_2048_12bit': (2048, 12, pydicom.uid.JPEG2000Lossless),
  'jpeg2000_lossy_2048_12bit_10to1': (2048, 12, pydicom.uid.JPEG2000),
  'rle_2048_16bit': (2048, 16, pydicom.uid.RLELossless),
  'jpegls_lossless_2048_12bit': (2048, 12, pydicom.uid.JPEGLSLossless),
  'uncompressed_4000_16bit_largest': (4000, 16, pydicom.uid.ExplicitVRLittleEndian),
}


def chest_film(side: int, source: str = '') -> np.ndarray:
  """uint8 (side, side): a cxr_dev PNG when `source` names one, else a phantom, resampled."""
  if source:
    grey = images.load_grey(source)
  else:
    grey = phantom.render(0, 3, image_size=256, rng=np.random.default_rng(0))['image'][0]
  return np.asarray(Image.fromarray(grey).resize((side, side), Image.BILINEAR))


def encode(grey: np.ndarray, bits: int, syntax: str) -> bytes:
  """A DICOM file of `grey` at `bits` stored bits (values spread over them) in `syntax`."""
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.1'
  ds.SOPInstanceUID = pydicom.uid.generate_uid()
  ds.Modality, ds.BodyPartExamined, ds.ViewPosition = 'CR', 'CHEST', 'PA'
  if bits == 8:
    stored = grey
  else:
    stored = (grey.astype(np.uint32) * ((1 << bits) - 1) // 255).astype(np.uint16)
    ds_center = (1 << bits) / 2
    ds.WindowCenter, ds.WindowWidth = ds_center, (1 << bits)
  ds.set_pixel_data(stored, 'MONOCHROME2', bits)
  if syntax == pydicom.uid.JPEGBaseline8Bit:
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format='JPEG', quality=95)
    ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
    ds['PixelData'].VR = 'OB'
    ds.file_meta.TransferSyntaxUID = syntax
  elif syntax == pydicom.uid.JPEG2000:
    ds.compress(syntax, j2k_cr=[10], use_mct=False)
  elif pydicom.uid.UID(syntax).is_compressed:
    ds.compress(syntax)
  out = io.BytesIO()
  ds.save_as(out, enforce_file_format=True)
  return out.getvalue()


def _status_kb(key: str) -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(key + ':'):
        return int(line.split()[1])
  return -1


def _reset_peak_rss() -> bool:
  """Returns freed heap to the OS (glibc malloc_trim: else a decode reuses the arena and adds no
  RSS), then resets VmHWM to the current RSS (Linux >= 4.0); False where it cannot."""
  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def measure(data: bytes, repeats: int) -> dict:
  """{'wall_ms', 'cpu_ms' (medians), 'rss_mb', 'traced_mb' (peak added by one decode)}."""
  max_pixels = 64_000_000
  dicom.read_film(data, max_pixels=max_pixels)  # warm-up: plugin imports, caches
  walls, cpus = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    dicom.read_film(data, max_pixels=max_pixels)
    walls.append(time.perf_counter() - t)
    cpus.append(time.process_time() - c)
  rss = float('nan')
  gc.collect()
  if _reset_peak_rss():
    before = _status_kb('VmRSS')
    film = dicom.read_film(data, max_pixels=max_pixels)
    rss = (_status_kb('VmHWM') - before) / 1024
    del film
  tracemalloc.start()
  film = dicom.read_film(data, max_pixels=max_pixels)
  traced = tracemalloc.get_traced_memory()[1] / 2**20
  tracemalloc.stop()
  del film
  return {
    'wall_ms': float(np.median(walls)) * 1e3,
    'cpu_ms': float(np.median(cpus)) * 1e3,
    'rss_mb': rss,
    'traced_mb': traced,
  }


@contextlib.contextmanager
def timed(module, name: str):
  """Wraps module.name, summing its wall seconds into the yielded list's first item."""
  total = [0.0]
  original: Callable = getattr(module, name)

  def wrapper(*args, **kwargs):
    t = time.perf_counter()
    try:
      return original(*args, **kwargs)
    finally:
      total[0] += time.perf_counter() - t

  setattr(module, name, wrapper)
  try:
    yield total
  finally:
    setattr(module, name, original)


def predict_share(workdir: str, data: bytes, n: int) -> dict:
  """launch.predict's library call on `n` copies of a DICOM film: wall s and the decode share."""
  folder = tempfile.mkdtemp(prefix='dicom_bench_')
  try:
    for i in range(n):
      Path(folder, f'film_{i:04d}.dcm').write_bytes(data)
    out = os.path.join(folder, 'predictions.csv')
    # One call first: compilation and checkpoint restore are not what a folder of films costs.
    inference.predict_workdir(workdir, out, images=[os.path.join(folder, 'film_0000.dcm')])
    with timed(dicom, 'read_film') as decode:
      t = time.perf_counter()
      result = inference.predict_workdir(workdir, out, images=[folder])
      wall = time.perf_counter() - t
    return {'films': result['rows'], 'wall_s': wall, 'decode_s': decode[0]}
  finally:
    shutil.rmtree(folder, ignore_errors=True)


def _cpu_model() -> str:
  with contextlib.suppress(OSError), open('/proc/cpuinfo') as f:
    for line in f:
      if line.startswith('model name'):
        return line.split(':', 1)[1].strip()
  return platform.processor() or '?'


def _load() -> str:
  one, five, fifteen = os.getloadavg()
  return f'load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores'


def dicom_main(
  *,
  source: str = '',
  repeats: int = 5,
  workdir: str = '',
  n_predict: int = 64,
  only: str = '',
  predict_film: str = 'jpeg_baseline_1024_8bit',
) -> int:
  """`launch.benchmark_dicom`: prints the sections of the module docstring."""
  print(f'DICOM decode, one film at a time; {_cpu_model()}; {_load()}')
  print(f'  film from: {source or "a phantom (no --source)"}; median of {repeats} decodes')
  print(
    f'  {"film":<34} {"file MB":>8} {"wall ms":>9} {"CPU ms":>9} {"peak RSS MB":>12} '
    f'{"traced MB":>10}'
  )
  encoded = {}
  for name, (side, bits, syntax) in FILMS.items():
    if only and only not in name:
      continue
    data = encode(chest_film(side, source), bits, syntax)
    m = measure(data, repeats if side < 4000 else max(1, repeats // 2))
    print(
      f'  {name:<34} {len(data) / 2**20:8.2f} {m["wall_ms"]:9.1f} {m["cpu_ms"]:9.1f} '
      f'{m["rss_mb"]:12.1f} {m["traced_mb"]:10.1f}'
    )
    encoded[name] = data
  print(f'  ({_load()} after)')
  if workdir:
    side, bits, syntax = FILMS[predict_film]
    data = encoded.get(predict_film) or encode(chest_film(side, source), bits, syntax)
    r = predict_share(workdir, data, n_predict)
    print(
      f'\nlaunch.predict on {r["films"]} {predict_film} DICOM films ({workdir}): '
      f'{r["wall_s"]:.2f} s wall ({1e3 * r["wall_s"] / r["films"]:.0f} ms per film, '
      f'{r["films"] / r["wall_s"]:.1f} films/s); DICOM decode {r["decode_s"]:.2f} s summed over '
      f'the {os.cpu_count()} reader threads ({1e3 * r["decode_s"] / r["films"]:.0f} ms per film) = '
      f'{100 * r["decode_s"] / r["wall_s"]:.0f} % of the wall time (near or over 100 %: the '
      f'readers decode in parallel and decoding is the bottleneck); {_load()}'
    )
  return 0
