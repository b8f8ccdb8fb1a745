"""Feature-space out-of-distribution score: how unlike the training films an image is.

Method (docs/OOD.md has the measurements behind each choice):

- Features. One eval-mode forward pass of the image itself (no test-time augmentation) gives the
  logits and the Grad-CAM feature map `cam_features` every model marks (docs/ARCHITECTURE.md),
  global-average-pooled: the penultimate features the head reads. They are L2-normalised.
  (Adding earlier layers, as Lee et al. do, lowered the AUROCs on real films without learned layer
  weights, and those would have to be fitted on OOD examples we do not want to recognise.)
- Mahalanobis (Lee et al., NeurIPS 2018): class-conditional Gaussians with one shared covariance,
  fitted on the training split's features (class means; covariance of the class-centred features
  by scikit-learn's `LedoitWolf` shrinkage). The score is the squared Mahalanobis distance to the
  nearest class mean, minus the validation split's median, over its interquartile range (0 = a
  typical validation film; comparable across runs).
- Energy (Liu et al., NeurIPS 2020), the cheap comparison: -logsumexp(logits), from the same pass.
- Threshold (`threshold_rank`): a one-sided tolerance bound on the validation split's scores: the
  smallest order statistic below which, for films exchangeable with the validation split, at most
  `false_alarm` (5 %) score with probability `confidence` (95 %). With 120 validation films that is
  the 119th of 120 (99 % pass); with thousands it tends to the 95 % quantile. `confidence=0` gives
  the plain (1 - false_alarm) quantile. The same rule sets the energy threshold.

Higher scores mean less like the training films. `fit` / `score` / `in_distribution` are numpy;
`make_feature_fn` is the jitted forward pass; `save` / `load` keep the fitted model in the workdir
(`ood_model.npz`, beside the checkpoint it was fitted on).
"""

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcxr.data import preprocess

FILE = 'ood_model.npz'
VERSION = 1
CAM_NAME = 'cam_features'
DEFAULT_FALSE_ALARM = 0.05
DEFAULT_CONFIDENCE = 0.95


def make_feature_fn(
  module, variables: dict, *, dtype=jnp.float32
) -> Callable[[np.ndarray], jax.Array]:
  """fn(images uint8 (B, S, S, 1)) -> float32 (B, C + K): logits, then pooled `cam_features`.

  Jitted; one eval-mode pass of the image itself.
  """
  variables = {k: v for k, v in variables.items() if k in ('params', 'batch_stats')}

  @jax.jit
  def features(variables, images):
    x = preprocess.to_model_input(images, dtype)
    logits, state = module.apply(variables, x, train=False, mutable=['intermediates'])
    return outputs_of(logits, state['intermediates'])

  # Variables are an argument, not closed-over constants, so they are not baked into the HLO.
  return functools.partial(features, variables)


def outputs_of(logits: jax.Array, intermediates: dict) -> jax.Array:
  """float32 (B, C + K): the logits, then the global-average-pooled `cam_features` of one forward
  pass (`module.apply(..., mutable=['intermediates'])`); runs inside jit."""
  pooled = intermediates[CAM_NAME][0].astype(jnp.float32).mean(axis=(1, 2))
  return jnp.concatenate([logits.astype(jnp.float32), pooled], axis=-1)


def split_outputs(
  outputs: np.ndarray, num_classes: int, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """(N, C + K) feature-fn outputs -> (logits (N, C), pooled features (N, K)), float64."""
  outputs = np.asarray(outputs, np.float64)
  if (
    outputs.ndim != 2
    or outputs.shape[1] <= num_classes
    or (width is not None and outputs.shape[1] != num_classes + width)
  ):
    want = f'(N, {num_classes} + {width})' if width is not None else f'(N, > {num_classes})'
    raise ValueError(
      f'Feature outputs of shape {outputs.shape}; expected {want}: '
      f'{num_classes} logits, then the pooled features.'
    )
  return outputs[:, :num_classes], outputs[:, num_classes:]


def energy(logits: np.ndarray) -> np.ndarray:
  """Energy OOD score of (N, C) logits: -logsumexp (temperature 1); higher = more OOD."""
  logits = np.asarray(logits, np.float64)
  top = logits.max(axis=1, keepdims=True)
  return -(top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))


def _l2(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
  """Squared Mahalanobis distance of (N, K) features to the nearest of (C, K) means: (N,)."""
  diff = features[:, None, :] - means[None]  # (N, C, K)
  return np.einsum('nck,kl,ncl->nc', diff, precision, diff).min(axis=1)


def threshold_rank(
  n: int, false_alarm: float = DEFAULT_FALSE_ALARM, confidence: float = DEFAULT_CONFIDENCE
) -> int:
  """1-based rank k of the validation score used as the threshold (module docstring).

  The k-th smallest of n exchangeable scores leaves out at most `false_alarm` of future ones with
  probability P(Binomial(n, 1 - false_alarm) <= k - 1); k is the smallest rank where that reaches
  `confidence` (n when none does: too few films for the confidence). confidence=0: the plain
  ceil(n (1 - false_alarm)).
  """
  if n < 1:
    raise ValueError(f'n={n}: no validation scores to set a threshold on.')
  p = 1.0 - false_alarm
  if confidence <= 0:
    return max(1, min(n, math.ceil(n * p)))
  i = np.arange(n + 1)
  log_pmf = (
    np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in i])
    + i * math.log(p)
    + (n - i) * math.log1p(-p)
  )
  cdf = np.cumsum(np.exp(log_pmf))
  ok = np.nonzero(cdf[:n] >= confidence)[0]  # cdf[k - 1] for k = 1..n
  return int(ok[0]) + 1 if len(ok) else n


@dataclasses.dataclass
class OodModel:
  """A fitted score (see the module docstring).

  Attributes:
    num_classes: C (the logits come first in the feature outputs).
    means: class means (C, K) of the L2-normalised training features.
    precision: the inverse shared covariance (K, K) (Ledoit-Wolf).
    loc, scale: validation median and interquartile range of the squared distance.
    threshold: Mahalanobis score above which a film is out of distribution.
    energy_threshold: the same rule applied to the energy score.
    meta: JSON-able facts: rule, false alarm, confidence, rank, checkpoint step and kind, model,
      image size, counts, validation score quantiles.
  """

  num_classes: int
  means: np.ndarray
  precision: np.ndarray
  loc: float
  scale: float
  threshold: float
  energy_threshold: float
  meta: dict

  @property
  def width(self) -> int:
    return int(self.means.shape[1])


def _distance(means: np.ndarray, precision: np.ndarray, features: np.ndarray) -> np.ndarray:
  return mahalanobis(_l2(features), means, precision)


def rule_text(rank: int, n: int, false_alarm: float, confidence: float) -> str:
  """How the threshold was set, in words (reports and ood_model.npz)."""
  where = f'validation score {rank} of {n} in ascending order ({rank / n:.1%} of them pass)'
  if confidence <= 0:
    return f'{where}: the {1 - false_alarm:.0%} quantile'
  return (
    f'{where}: a tolerance bound keeping false alarms on films like the validation split '
    f'at most {false_alarm:.0%} with {confidence:.0%} confidence'
  )


def fit(
  train_outputs: np.ndarray,
  train_labels: np.ndarray,
  val_outputs: np.ndarray,
  *,
  num_classes: int,
  false_alarm: float = DEFAULT_FALSE_ALARM,
  confidence: float = DEFAULT_CONFIDENCE,
  meta: dict | None = None,
) -> OodModel:
  """Fits the class-conditional Gaussians on training features; thresholds on validation.

  Args:
    train_outputs: (N_train, C + K) `make_feature_fn` outputs of the training split (eval mode,
      no augmentation).
    train_labels: (N_train,) int labels.
    val_outputs: (N_val, C + K) outputs of the validation split.
    num_classes: C.
    false_alarm: the false-alarm rate the threshold aims at on validation-like films.
    confidence: the probability that it holds (`threshold_rank`); 0 = the plain quantile.
    meta: extra JSON-able facts to keep (checkpoint step, model, ...).

  Returns:
    The fitted `OodModel`.

  Raises:
    ValueError: a class without training films, too few validation films, or a bad rate.
  """
  from sklearn import covariance  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  if not 0.0 < false_alarm < 0.5 or not 0.0 <= confidence < 1.0:
    raise ValueError(
      f'false_alarm={false_alarm} must be in (0, 0.5) and confidence={confidence} in [0, 1).'
    )
  train_labels = np.asarray(train_labels, np.int64)
  _, feats = split_outputs(train_outputs, num_classes)
  val_logits, val_feats = split_outputs(val_outputs, num_classes, feats.shape[1])
  counts = np.bincount(train_labels, minlength=num_classes)
  if np.any(counts == 0) or len(train_labels) != len(feats):
    raise ValueError(
      f'Every class needs training films to fit the OOD score; per-class counts '
      f'{counts.tolist()} for {len(feats)} feature rows.'
    )
  if len(val_logits) < 2:
    raise ValueError(
      f'{len(val_logits)} validation film(s): at least 2 are needed to set the OOD threshold.'
    )
  x = _l2(feats)
  means = np.stack([x[train_labels == c].mean(axis=0) for c in range(num_classes)])
  # Shrinkage makes the covariance full rank: a plain inverse (sklearn's precision_ is a pinvh,
  # an eigendecomposition, 10x slower at these sizes).
  lw = covariance.LedoitWolf(assume_centered=True, store_precision=False).fit(
    x - means[train_labels]
  )
  precision = np.linalg.inv(lw.covariance_)
  val_d = _distance(means, precision, val_feats)
  q25, loc, q75 = np.percentile(val_d, [25, 50, 75])
  scale = max(float(q75 - q25), 1e-9)
  val_scores = np.sort((val_d - loc) / scale)
  rank = threshold_rank(len(val_scores), false_alarm, confidence)
  info = dict(meta or {})
  info.update(
    {
      'version': VERSION,
      'false_alarm': float(false_alarm),
      'confidence': float(confidence),
      'rank': rank,
      'rule': rule_text(rank, len(val_scores), false_alarm, confidence),
      'num_train': len(train_labels),
      'num_validation': len(val_scores),
      'train_per_class': counts.tolist(),
      'features': f'{CAM_NAME} (pooled, L2), {x.shape[1]}',
      'validation_quantiles': {
        str(q): float(np.quantile(val_scores, q)) for q in (0.5, 0.9, 0.95, 0.99)
      },
    }
  )
  return OodModel(
    num_classes=int(num_classes),
    means=means,
    precision=precision,
    loc=float(loc),
    scale=scale,
    threshold=float(val_scores[rank - 1]),
    energy_threshold=float(np.sort(energy(val_logits))[rank - 1]),
    meta=info,
  )


def score(model: OodModel, outputs: np.ndarray) -> dict[str, np.ndarray]:
  """Scores (N, C + K) feature outputs: {'mahalanobis': (N,), 'energy': (N,)}; higher = less like
  the training films."""
  logits, feats = split_outputs(outputs, model.num_classes, model.width)
  d = _distance(model.means, model.precision, feats)
  return {'mahalanobis': (d - model.loc) / model.scale, 'energy': energy(logits)}


def in_distribution(
  model: OodModel, scores: dict[str, np.ndarray], kind: str = 'mahalanobis'
) -> np.ndarray:
  """bool (N,): the `kind` score is at or below its threshold."""
  threshold = model.threshold if kind == 'mahalanobis' else model.energy_threshold
  return np.asarray(scores[kind]) <= threshold


def save(model: OodModel, workdir: str) -> str:
  """Writes `workdir/ood_model.npz` atomically; returns its path."""
  header = {
    'num_classes': model.num_classes,
    'loc': model.loc,
    'scale': model.scale,
    'threshold': model.threshold,
    'energy_threshold': model.energy_threshold,
    'meta': model.meta,
  }
  path = os.path.join(workdir, FILE)
  tmp = path + '.tmp.npz'
  np.savez(tmp, header=np.asarray(json.dumps(header)), means=model.means, precision=model.precision)
  os.replace(tmp, path)
  return path


def load(workdir: str) -> OodModel | None:
  """The fitted model of a workdir, or None when none was fitted.

  Raises:
    ValueError: the file exists but is unreadable or of another version (refit it).
  """
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return None
  fix = f'Refit it: python -m launch.fit_ood --workdir {workdir} --refit.'
  try:
    with np.load(path) as z:
      h = json.loads(str(z['header']))
      model = OodModel(
        num_classes=int(h['num_classes']),
        means=z['means'],
        precision=z['precision'],
        loc=float(h['loc']),
        scale=float(h['scale']),
        threshold=float(h['threshold']),
        energy_threshold=float(h['energy_threshold']),
        meta=h['meta'],
      )
  except Exception as e:  # pylint: disable=broad-except  (zip, JSON and key errors alike)
    raise ValueError(
      f'The OOD model {path} is unreadable ({type(e).__name__}: {e}). {fix}'
    ) from None
  if model.meta.get('version') != VERSION:
    raise ValueError(
      f'The OOD model {path} is version {model.meta.get("version")}, this code '
      f'reads version {VERSION}. {fix}'
    )
  return model


def load_for(workdir: str, bundle) -> tuple[OodModel | None, str]:
  """(the workdir's model, '') if it was fitted on `bundle`'s checkpoint, else (None, why).

  Args:
    workdir: training workdir.
    bundle: the restored checkpoint (`checkpoint.restore_for_inference`) it will score with.

  Raises:
    ValueError: an unreadable model file (`load`).
  """
  model = load(workdir)
  fix = f'python -m launch.fit_ood --workdir {workdir}'
  if model is None:
    return None, (
      f'no OOD score fitted for {workdir}: ood_score is empty and only the input '
      f'checks set in_distribution. Fit it with `{fix}`.'
    )
  step, name = model.meta.get('step'), model.meta.get('model')
  if step != int(bundle.step) or name != bundle.config.model.name:
    return None, (
      f'the OOD score of {workdir} was fitted on {name} step {step}, not on this '
      f'checkpoint ({bundle.config.model.name} step {bundle.step}): ignored, so '
      f'ood_score is empty. Refit it with `{fix} --refit`.'
    )
  return model, ''
