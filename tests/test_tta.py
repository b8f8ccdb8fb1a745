"""Test-time augmentation (config.eval.tta): the views, and one averaging for training and
predict."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr.data import preprocess
from jaxcxr.evaluation import inference
from jaxcxr.training import steps
from tests import train_helpers as th

VIEWS = preprocess.TTA_VIEWS


def test_views_are_the_input_shifted_and_zoomed():
  img = np.zeros((2, 50, 50, 1), np.uint8)
  img[:, 25, 25] = 200  # one bright pixel at the centre
  img[1, 10, 40] = 100  # and, in the second image, one off-centre
  out = np.asarray(preprocess.tta_views(img))
  assert out.shape == (len(VIEWS) * 2, 50, 50, 1) and out.dtype == np.float32
  np.testing.assert_array_equal(out[:2], img)  # view 0 is the input itself
  for v, (zoom, dx, dy) in enumerate(VIEWS):
    for b in range(2):
      view = out[v * 2 + b, ..., 0]
      y, x = np.unravel_index(np.argmax(view), view.shape)
      # the centre pixel lands where the zoom about the centre and the shift put it
      assert abs(x - (25.5 + dx * 50 - 0.5)) <= 1 and abs(y - (25.5 + dy * 50 - 0.5)) <= 1, (
        v,
        x,
        y,
      )
      if b == 0:  # intensity is resampled, not lost: the pixel's mass scales with the area
        assert abs(view.sum() - 200 * zoom**2) <= 0.1 * 200 * zoom**2, (v, view.sum())
  # Zooming out (0.93) pulls the off-centre pixel towards the centre, zooming in (1.08) pushes it.
  far = {
    zoom: np.unravel_index(
      np.argmax(np.where(out[v * 2 + 1, ..., 0] < 150, out[v * 2 + 1, ..., 0], 0)), (50, 50)
    )
    for v, (zoom, dx, dy) in enumerate(VIEWS)
    if dx == dy == 0
  }
  assert far[0.93][1] < far[1.0][1] < far[1.08][1], far


def test_eval_step_and_predict_fn_average_the_same_views():
  module, state = th.init_state(th.tiny_config('/tmp/unused', **{'model.dropout': 0.0})[0])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (4, 32, 32, 1)).astype(np.uint8)
  tta_step = jax.jit(functools.partial(steps.eval_step, dtype=jnp.float32, tta=True))
  plain_step = jax.jit(functools.partial(steps.eval_step, dtype=jnp.float32))
  averaged = np.asarray(jax.nn.softmax(tta_step(state, {'image': images})))
  # By hand: the plain eval step on each view, softmax, mean.
  views = np.asarray(preprocess.tta_views(images)).reshape((len(VIEWS),) + images.shape)
  by_hand = np.mean(
    [np.asarray(jax.nn.softmax(plain_step(state, {'image': v}))) for v in views], axis=0
  )
  np.testing.assert_allclose(averaged, by_hand, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(averaged.sum(axis=1), 1.0, rtol=1e-5)
  plain = np.asarray(jax.nn.softmax(plain_step(state, {'image': images})))
  assert np.abs(averaged - plain).max() > 1e-4  # the views do change the answer
  # launch.predict / launch.evaluate (make_predict_fn) give what the training run reported.
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  for tta, want in ((True, averaged), (False, plain)):
    got = np.asarray(inference.make_predict_fn(module, variables, tta=tta)(images))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
