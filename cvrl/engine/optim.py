"""Optimisers and learning-rate schedules from `config.optim` (optax).

- 'sgd': momentum SGD as the released CVRL recipe (TF/Keras): the learning rate enters
  the momentum buffer, v <- m v - lr (g + wd w), w <- w + v (Nesterov optional).
- 'lars': LARS (You et al.; SimCLR's variant): g + wd w scaled by the trust ratio
  trust * ||w|| / ||g + wd w||, then lr and momentum. BatchNorm parameters and biases are
  excluded from both weight decay and the trust ratio.
- 'adamw': Adam with decoupled weight decay (decay lr * wd * w, as optax).
Weight decay only touches conv and dense kernels (variables named 'kernel'). The peak
learning rate is base_lr * batch_size / base_batch_size. Schedules ('cosine', CVRL's): linear
warm-up from 0, then a cosine from the peak to 0 over the remaining steps (or 'constant');
'half_cosine' (SlowFast's, the rho study's): one half-cosine over the whole run, the linear
warm-up from `warmup_start_lr` joining it at the end of warm-up.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("sgd", "lars", "adamw")
SCHEDULES = ("cosine", "constant", "half_cosine")
DECAYED_NAMES = ("kernel",)


def peak_learning_rate(optim: ml_collections.ConfigDict, batch_size: int) -> float:
  """Linear scaling: base_lr per `base_batch_size` videos."""
  return float(optim.base_lr) * batch_size / float(optim.base_batch_size)


def warmup_cosine(peak: float, warmup_steps: int, total_steps: int,
                  kind: str = "cosine", start: float = 0.0) -> Callable[[Any], jax.Array]:
  """The learning rate after `count` optimizer updates (t), W warm-up and T total steps.

  'cosine' (CVRL's TF recipe): peak t / W for t < W, then the cosine restarted at W,
  peak (1 + cos(pi (t - W) / (T - W))) / 2. 'constant': peak after warm-up.
  'half_cosine' (SlowFast's lr_policy, not restarted after warm-up): c(t) =
  peak (1 + cos(pi t / T)) / 2 for t >= W; for t < W the line from `start` at 0 to c(W).
  `start` only applies to 'half_cosine' (SlowFast's WARMUP_START_LR).
  """
  if kind not in SCHEDULES:
    raise ValueError(f"config.optim.schedule must be one of {list(SCHEDULES)}, got {kind!r}")
  warmup_steps, total_steps = int(warmup_steps), int(total_steps)
  decay_steps = max(total_steps - warmup_steps, 1)

  def half_cosine(t):
    return 0.5 * peak * (1.0 + jnp.cos(math.pi * jnp.clip(t / max(total_steps, 1), 0.0, 1.0)))

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    if kind == "half_cosine":
      joint = half_cosine(jnp.float32(warmup_steps))
      warm = start + (joint - start) * t / max(warmup_steps, 1)
      return jnp.where(t < warmup_steps, warm, half_cosine(t))
    warm = peak * t / max(warmup_steps, 1)
    if kind == "cosine":
      progress = jnp.clip((t - warmup_steps) / decay_steps, 0.0, 1.0)
      after = 0.5 * peak * (1.0 + jnp.cos(math.pi * progress))
    else:
      after = jnp.full_like(t, peak)
    return jnp.where(t < warmup_steps, warm, after)
  return schedule


def _leaf_name(path) -> str:
  """The variable's attribute name, e.g. 'kernel' for (..., 'conv', 'kernel', .value)."""
  for key in reversed(path):
    name = getattr(key, "key", getattr(key, "name", None))
    if isinstance(name, str) and name != "value":
      return name
  return ""


def decay_mask(params) -> Any:
  """True for conv and dense kernels; False for BatchNorm scale/bias and biases."""
  return jax.tree_util.tree_map_with_path(lambda p, _: _leaf_name(p) in DECAYED_NAMES, params)


def build(optim: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
  """The optimizer `optim.name` names, with `schedule` as its learning rate."""
  name = optim.name
  wd = float(optim.weight_decay or 0.0)
  if name == "sgd":
    tx = optax.chain(
        optax.add_decayed_weights(wd, mask=decay_mask),
        optax.scale_by_learning_rate(schedule),
        optax.trace(decay=float(optim.momentum), nesterov=bool(optim.nesterov)))
  elif name == "lars":
    tx = optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                    trust_coefficient=float(optim.lars_trust), eps=float(optim.lars_eps),
                    trust_ratio_mask=decay_mask, momentum=float(optim.momentum),
                    nesterov=bool(optim.nesterov))
  elif name == "adamw":
    tx = optax.adamw(schedule, b1=float(optim.b1), b2=float(optim.b2), eps=float(optim.eps),
                     weight_decay=wd, mask=decay_mask)
  else:
    raise ValueError(f"config.optim.name must be one of {list(OPTIMIZERS)}, got {name!r}")
  if optim.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(float(optim.grad_clip)), tx)
  return tx


def validate(optim: ml_collections.ConfigDict) -> None:
  if optim.name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name must be one of {list(OPTIMIZERS)}, got {optim.name!r}")
  if optim.schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule must be one of {list(SCHEDULES)}, "
                     f"got {optim.schedule!r}")
  if not float(optim.base_lr) >= 0 or not float(optim.base_batch_size) > 0:
    raise ValueError("config.optim.base_lr must be >= 0 and base_batch_size > 0")


def make(optim: ml_collections.ConfigDict, global_batch: int, total_steps: int,
         warmup_steps: int, groups: tuple[Callable[[Any], Any], dict[str, str]] | None = None):
  """(optax transform, schedule, peak lr): the one optimizer every training job uses.

  Linear warm-up to the linearly scaled peak, then `optim.schedule`. `groups`, if given,
  is (labels_fn, {group: config field of its base_lr}): each group gets `build` with its
  own base_lr under the same schedule shape (optax.multi_transform), e.g. fine-tuning's
  backbone at `base_lr` and new head at `head_lr`; the peak is then {group: peak} and the
  schedule the first group's.
  """
  kind = optim.schedule
  start = float(optim.warmup_start_lr)
  if groups is None:
    peak = peak_learning_rate(optim, global_batch)
    schedule = warmup_cosine(peak, warmup_steps, total_steps, kind, start)
    return build(optim, schedule), schedule, peak
  labels_fn, fields = groups
  txs, peaks, schedules = {}, {}, []
  for group, field in fields.items():
    group_optim = ml_collections.ConfigDict(optim.to_dict())
    group_optim.base_lr = float(optim[field])
    peaks[group] = peak_learning_rate(group_optim, global_batch)
    schedules.append(warmup_cosine(peaks[group], warmup_steps, total_steps, kind, start))
    txs[group] = build(group_optim, schedules[-1])
  return optax.multi_transform(txs, labels_fn), schedules[0], peaks
