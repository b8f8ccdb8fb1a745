"""pytest plugin for scripts/reliability_report.py: appends every test phase's outcome to
$JAXCXR_RELIABILITY_RECORDS (the same JSON-lines file the `record` fixture writes to).

  JAXCXR_RELIABILITY_RECORDS=out.jsonl python -m pytest -p tests.reliability.report_plugin ...
"""

import json
import os

RECORDS_ENV = 'JAXCXR_RELIABILITY_RECORDS'


def pytest_runtest_logreport(report):
  path = os.environ.get(RECORDS_ENV)
  if not path:
    return
  if report.when != 'call' and report.passed and report.duration < 1.0:
    return  # quick setup/teardown phases carry no information
  with open(path, 'a') as f:
    f.write(
      json.dumps(
        {
          'test': report.nodeid,
          'phase': report.when,
          'outcome': report.outcome,
          'seconds': round(report.duration, 2),
        }
      )
      + '\n'
    )
