"""`config.model.cpu_ynn_fusion`: the XLA:CPU flag is added once, never over the user's, and is in
effect in launch.train (whose imports must not start the backend)."""

import subprocess
import sys

from jaxcxr.training import cpu_flags
from tests import train_helpers

YNN = '--xla_cpu_experimental_ynn_fusion_type'


def test_with_flag_adds_it_once_for_a_tested_jaxlib():
  flags = cpu_flags.with_flag('--xla_force_host_platform_device_count=8',
                              cpu_flags.YNN_FUSION_FLAG, '0.10.2')
  assert flags.split() == ['--xla_force_host_platform_device_count=8', cpu_flags.YNN_FUSION_FLAG]
  assert cpu_flags.with_flag(flags, cpu_flags.YNN_FUSION_FLAG, '0.10.2') == flags


def test_with_flag_keeps_the_users_value_and_skips_untested_jaxlibs():
  mine = f'{YNN}=dot'
  assert cpu_flags.with_flag(mine, cpu_flags.YNN_FUSION_FLAG, '0.10.2') == mine
  # An unknown flag aborts XLA: a jaxlib not known to have the flag gets nothing.
  assert cpu_flags.with_flag('', cpu_flags.YNN_FUSION_FLAG, '0.11.0') == ''


# Import launch.train, do what its main() does first, then compile a dot followed by elementwise
# ops. Under the flag XLA:CPU fuses the elementwise ops into the dot's YNNPACK fusion (the root).
_PROBE = """
import os, sys, launch.train, jax, jax.numpy as jnp
from jaxcxr.training import cpu_flags
applied = cpu_flags.apply(sys.argv[1] == 'on')
hlo = jax.jit(lambda a, b: jnp.tanh(a @ b) + 1).lower(jnp.ones((64, 64)), jnp.ones((64, 64))).compile()
root = [l for l in hlo.as_text().splitlines() if l.strip().startswith('ROOT')][-1]
print(applied, root.split()[1] == '%ynn_fusion', os.environ['XLA_FLAGS'])
"""


def _probe(setting: str) -> list[str]:
  env = train_helpers.env()
  env['XLA_FLAGS'] = ' '.join(f for f in env['XLA_FLAGS'].split() if not f.startswith(YNN))
  out = subprocess.run([sys.executable, '-c', _PROBE, setting], cwd=train_helpers.REPO, env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  return out.stdout.split()


def test_on_puts_the_flag_in_effect_after_launch_train_imports():
  applied, fused, *flags = _probe('on')
  assert (applied, fused) == ('True', 'True')
  assert cpu_flags.YNN_FUSION_FLAG in flags


def test_off_leaves_xla_flags_alone():
  applied, fused, *flags = _probe('off')
  assert (applied, fused) == ('False', 'False')
  assert not any(f.startswith(YNN) for f in flags)
