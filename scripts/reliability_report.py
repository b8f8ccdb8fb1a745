r"""Runs the reliability suite and prints its figures (issue #8).

  python scripts/reliability_report.py                  # tests/reliability + bad inputs elsewhere
  python scripts/reliability_report.py --fast           # without the slow subprocess tests
  python scripts/reliability_report.py --json out.json  # also write the figures as JSON

Runs pytest once on tests/reliability plus the bad-input tests of other modules (EXTERNAL below),
with tests/reliability/report_plugin.py and the `record` fixture writing one JSON line per test
outcome, injected fault, resume and bad input into a temporary file; then prints:

  faults injected            kill -9 / SIGTERM / truncated checkpoints / full disk / NaN updates
  resumes that matched       re-runs after a fault whose final state equals the uninterrupted run
  bad inputs tried           files, folders, configs, weights, workdirs and checkpoints
  crashes without a message  bad inputs that ended in a traceback or an unclear message
                             (target 0)
  data lost                  checkpoints or logged rows lost, or resumes that did not match
                             (target 0)

Exit status: 0 when every test passed and both targets are 0, 1 otherwise.
"""

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RECORDS_ENV = 'JAXCXR_RELIABILITY_RECORDS'

# Bad-input and fault tests outside tests/reliability, referenced rather than duplicated:
# node id -> (bad inputs per test instance, faults per test instance, what).
EXTERNAL = {
  'tests/data/test_images.py::test_zero_byte_file': (1, 0, 'zero-byte file'),
  'tests/data/test_images.py::test_truncated_png': (1, 0, 'truncated PNG'),
  'tests/data/test_images.py::test_text_file_named_png': (1, 0, 'text file named .png'),
  'tests/data/test_images.py::test_decompression_bomb_refused_without_decoding': (
    2,
    0,
    'decompression bombs (20000^2, 9000^2)',
  ),
  'tests/data/test_images.py::test_max_pixels_applies_to_valid_images': (1, 0, 'over max_pixels'),
  'tests/data/test_images.py::test_rgba_composited_on_black': (1, 0, 'RGBA'),
  'tests/data/test_images.py::test_16bit_stretched_min_max': (1, 0, '16-bit PNG'),
  'tests/data/test_images.py::test_palette_image': (1, 0, 'palette PNG'),
  'tests/data/test_images.py::test_load_missing_file': (1, 0, 'missing file'),
  'tests/data/test_preprocess.py::test_inference_errors_name_the_file': (1, 0, 'inference file'),
  'tests/data/test_builder.py::test_bad_files_error_names_each_file': (
    5,
    0,
    'zero/truncated/text/non-image/bomb in a class folder',
  ),
  'tests/data/test_builder.py::test_bad_files_skipped_counted_and_reported': (
    7,
    0,
    'the same five skipped + RGBA, 16-bit kept',
  ),
  'tests/data/test_builder.py::test_folder_errors': (
    6,
    0,
    'missing/empty class folder, no folder, unknown builder config, fractions, no dir',
  ),
  'tests/data/test_builder.py::test_mismatched_settings_detected_with_command': (
    2,
    0,
    'dataset prepared with other settings / changed folder',
  ),
  'tests/data/test_cli.py::test_prepare_cli_summary_bad_file_and_reprepare_command': (
    2,
    0,
    'prepare_data CLI: a bad file, other split settings on a prepared data_dir',
  ),
  'tests/data/test_cli.py::test_prepare_cli_needs_a_source_and_prepares_phantoms': (
    1,
    0,
    'prepare_data CLI: folder config without manual_dir',
  ),
  'tests/test_weights.py::test_pth_with_pickled_code_is_refused': (1, 0, '.pth with code'),
  'tests/test_weights.py::test_truncated_file': (1, 0, 'truncated .pth/.safetensors'),
  'tests/test_weights.py::test_bad_local_sources': (4, 0, 'missing/unknown/hash/arch source'),
  'tests/test_weights.py::test_wrong_arch_names_keys_and_guesses': (
    1,
    0,
    'state dict of other arch',
  ),
  'tests/test_weights.py::test_unexpected_key_and_wrong_shape': (2, 0, 'extra key, wrong shape'),
  'tests/test_weights.py::test_load_pretrained_mismatches': (4, 0, 'pretrained mismatches'),
  'tests/test_convert_cli.py::test_errors_exit_nonzero_with_message': (3, 0, 'launch.convert CLI'),
  'tests/test_train.py::test_bad_config_values': (1, 0, 'bad config value'),
  'tests/test_train.py::test_mistyped_override_names_the_key': (1, 0, 'mistyped key'),
  'tests/test_train.py::test_unknown_early_stopping_metric': (1, 0, 'unknown metric'),
  'tests/test_train.py::test_resume_with_other_config_is_refused': (1, 0, 'resume, other config'),
  'tests/test_train.py::test_nonfinite_stops_naming_the_step_and_keeps_checkpoint': (
    0,
    1,
    'NaN loss (huge learning rate)',
  ),
  'tests/test_train.py::test_train_step_is_traced_once_and_keeps_state_on_nan': (
    0,
    1,
    'NaN step keeps the state',
  ),
  'tests/test_eval_cli.py::test_evaluate_cli_without_checkpoint': (1, 0, 'evaluate, no checkpoint'),
}


def _base(nodeid: str) -> str:
  return nodeid.split('[')[0]


def run_suite(fast: bool, extra_args: list[str]) -> tuple[list[dict], int, float]:
  """Runs pytest; returns (records, pytest exit status, wall seconds)."""
  fd, path = tempfile.mkstemp(prefix='reliability_', suffix='.jsonl')
  os.close(fd)
  cmd = [
    sys.executable,
    '-m',
    'pytest',
    'tests/reliability',
    *EXTERNAL,
    '-q',
    '-p',
    'tests.reliability.report_plugin',
    '-p',
    'no:cacheprovider',
    *extra_args,
  ]
  if fast:
    cmd += ['-m', 'not slow']
  env = dict(os.environ, **{RECORDS_ENV: path})
  t0 = time.time()
  rc = subprocess.call(cmd, cwd=REPO, env=env)
  seconds = time.time() - t0
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  os.remove(path)
  return records, rc, seconds


def figures(records: list[dict]) -> dict:
  """The report's numbers from the records (see the module docstring)."""
  outcome = {}  # nodeid -> worst outcome over its phases
  seconds = collections.Counter()
  for r in records:
    if 'outcome' in r:
      seconds[r['test']] += r['seconds']
      if outcome.get(r['test']) != 'failed':
        outcome[r['test']] = (
          'failed' if r['outcome'] == 'failed' else (outcome.get(r['test']) or r['outcome'])
        )
  notes = [r for r in records if 'outcome' not in r]

  faults = [r for r in notes if 'fault' in r]
  resumes = [r for r in notes if 'resumes' in r]
  bad = [r for r in notes if 'bad_input' in r]
  unclear = [r for r in bad if not r.get('clear')]
  lost = sum(int(r.get('data_lost', 0)) for r in notes)
  lost += sum(r['resumes'] for r in resumes if not r.get('bitwise'))

  ext_bad = ext_faults = ext_failed_bad = 0
  for test, result in outcome.items():
    if _base(test) in EXTERNAL and result != 'skipped':
      n_bad, n_faults, _ = EXTERNAL[_base(test)]
      ext_bad += n_bad
      ext_faults += n_faults
      if result == 'failed':
        ext_failed_bad += n_bad
  sigterm = [r['seconds_to_exit'] for r in faults if r['fault'] == 'sigterm']
  return {
    'tests': dict(collections.Counter(outcome.values())),
    'faults_injected': len(faults) + ext_faults,
    'faults_by_kind': dict(collections.Counter(r['fault'] for r in faults)),
    'resumes': sum(r['resumes'] for r in resumes),
    'resumes_matched_bitwise': sum(r['resumes'] for r in resumes if r.get('bitwise')),
    'bad_inputs_tried': len(bad) + ext_bad,
    'crashes_without_clear_message': len(unclear) + ext_failed_bad,
    'unclear': [r['bad_input'] for r in unclear],
    'data_lost': lost,
    'sigterm_seconds_to_exit': sigterm,
    'failed_tests': sorted(t for t, o in outcome.items() if o == 'failed'),
    'slowest_tests_s': dict(sorted(seconds.items(), key=lambda kv: -kv[1])[:8]),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--fast', action='store_true', help='skip the slow subprocess tests')
  parser.add_argument('--json', default='', help='also write the figures to this JSON file')
  parser.add_argument('pytest_args', nargs='*', help='extra pytest arguments (after --)')
  args = parser.parse_args()
  records, rc, seconds = run_suite(args.fast, args.pytest_args)
  f = figures(records)
  f['wall_seconds'] = round(seconds, 1)
  f['pytest_exit_status'] = rc
  print('\nReliability report (issue #8)')
  print(f'  tests:                          {f["tests"]} in {seconds / 60:.1f} min')
  print(f'  faults injected:                {f["faults_injected"]}  {f["faults_by_kind"]}')
  print(f'  resumes that matched bitwise:   {f["resumes_matched_bitwise"]} of {f["resumes"]}')
  print(f'  bad inputs tried:               {f["bad_inputs_tried"]}')
  print(
    f'  crashes without clear message:  {f["crashes_without_clear_message"]} (target 0)'
    + (f'  {f["unclear"]}' if f['unclear'] else '')
  )
  print(f'  data lost:                      {f["data_lost"]} (target 0)')
  if f['sigterm_seconds_to_exit']:
    print(f'  SIGTERM -> checkpoint -> exit:  {f["sigterm_seconds_to_exit"]} s (budget 30 s)')
  for t in f['failed_tests']:
    print(f'  FAILED {t}')
  if args.json:
    with open(args.json, 'w') as out:
      json.dump(f, out, indent=2)
  ok = rc == 0 and not f['crashes_without_clear_message'] and not f['data_lost']
  sys.exit(0 if ok else 1)


if __name__ == '__main__':
  main()
