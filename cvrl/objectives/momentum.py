"""Momentum (EMA) target networks: the cosine-annealed momentum and the EMA update.

Used by rho-MoCo's key encoder and rho-BYOL's target (Feichtenhofer et al., CVPR 2021). As in the
reference, only the parameters are averaged; a target's BatchNorm statistics come from
its own forward passes.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable

import jax
import jax.numpy as jnp
from flax import nnx


def cosine_momentum(step, total_steps: int, base: float):
  """m_t = 1 - (1 - m0) (cos(pi t / T) + 1) / 2: m0 at t = 0, rising to 1 at t = T.

  `step` may be a traced integer; t is clipped to [0, T].
  """
  if total_steps <= 0:
    raise ValueError(f"cosine momentum needs total_steps > 0, got {total_steps}")
  t = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(total_steps))
  return 1.0 - (1.0 - base) * (jnp.cos(math.pi * t / total_steps) + 1.0) / 2.0


def momentum_at(step, *, base: float, total_steps: int, schedule: str = "cosine"):
  """The target momentum at `step` for a schedule name: 'cosine' or 'constant'."""
  if schedule == "cosine":
    return cosine_momentum(step, total_steps, base)
  if schedule == "constant":
    return jnp.asarray(base, jnp.float32)
  raise ValueError(f"momentum schedule must be 'cosine' or 'constant', got {schedule!r}")


def schedule(base: float, name: str, total_steps: int | None):
  """step -> the target momentum of schedule `name` (`momentum_at`) over `total_steps`,
  the name checked now."""
  momentum_at(0, base=float(base), total_steps=1, schedule=name)
  if name == "cosine" and total_steps is None:
    raise ValueError("the cosine momentum needs the run's total steps: set config.total_steps, "
                     "or config.total_epochs and config.data.num_train_examples")
  return functools.partial(momentum_at, base=float(base), total_steps=total_steps,
                           schedule=name)


def ema_update(pairs: Iterable[tuple[nnx.Module, nnx.Module]], momentum) -> None:
  """target <- m * target + (1 - m) * online for every nnx.Param, in place.

  `pairs` holds (target, online) modules of identical structure.
  """
  m = jnp.asarray(momentum, jnp.float32)
  for target, online in pairs:
    t_state = nnx.state(target, nnx.Param)
    o_state = nnx.state(online, nnx.Param)
    average = lambda t, o: (m * t.astype(jnp.float32)
                            + (1.0 - m) * o.astype(jnp.float32)).astype(t.dtype)
    new = jax.tree.map(average, t_state, o_state)
    nnx.update(target, new)


def copy_params(target: nnx.Module, online: nnx.Module) -> None:
  """Sets the target's parameters to the online ones (the EMA's starting point)."""
  nnx.update(target, jax.tree.map(jnp.array, nnx.state(online, nnx.Param)))
