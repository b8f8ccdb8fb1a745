"""jaxcxr's default XLA:CPU flags: added once, never over the user's, and in effect in a launcher."""

import subprocess
import sys

from jaxcxr.training import cpu_flags
from tests import train_helpers

YNN = '--xla_cpu_experimental_ynn_fusion_type'


def test_with_defaults_adds_each_flag_once_for_a_tested_jaxlib():
  flags = cpu_flags.with_defaults('--xla_force_host_platform_device_count=8', '0.10.2')
  assert flags.split() == ['--xla_force_host_platform_device_count=8', *cpu_flags.DEFAULT_FLAGS]
  assert cpu_flags.with_defaults(flags, '0.10.2') == flags


def test_with_defaults_keeps_the_users_value_and_skips_untested_jaxlibs():
  mine = f'{YNN}=dot'
  assert cpu_flags.with_defaults(mine, '0.10.2') == mine
  # An unknown flag aborts XLA: a jaxlib not known to have the flag gets nothing.
  assert cpu_flags.with_defaults('', '0.11.0') == ''
  assert cpu_flags.with_defaults('', '0.9.0') == ''


# A launcher's imports must not start the backend (XLA would then ignore the flags): import
# launch.train, do what launch.cli.run does first, then compile a dot followed by elementwise ops.
# Under the flag XLA:CPU fuses the elementwise ops into the dot's YNNPACK fusion (the root).
_PROBE = """
import os, launch.train, jax, jax.numpy as jnp
from jaxcxr.training import cpu_flags
applied = cpu_flags.apply()
hlo = jax.jit(lambda a, b: jnp.tanh(a @ b) + 1).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile()
root = [l for l in hlo.as_text().splitlines() if l.strip().startswith('ROOT')][-1]
print(applied, root.split()[1] == '%ynn_fusion', os.environ['XLA_FLAGS'])
"""


def _probe(**extra_env) -> list[str]:
  env = train_helpers.env(**extra_env)
  env['XLA_FLAGS'] = ' '.join(f for f in env['XLA_FLAGS'].split() if not f.startswith(YNN))
  out = subprocess.run([sys.executable, '-c', _PROBE], cwd=train_helpers.REPO, env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  return out.stdout.split()


def test_launcher_start_puts_the_flags_in_effect():
  applied, fused, *flags = _probe()
  assert (applied, fused) == ('True', 'True')
  assert set(cpu_flags.DEFAULT_FLAGS) <= set(flags)


def test_opt_out_leaves_xla_flags_alone():
  applied, fused, *flags = _probe(JAXCXR_XLA_CPU_DEFAULTS='0')
  assert (applied, fused) == ('False', 'False')
  assert not any(f.startswith(YNN) for f in flags)
