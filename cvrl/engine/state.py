"""The pretraining state as a plain pytree, created already sharded on the mesh.

The objective's NNX model is split once into a static `graphdef` and two states:
`params` (the variables `objective.trainable` selects; the optimizer updates them) and
`rest` (everything else: BatchNorm statistics, EMA targets, queues). Pure functions merge
them back inside jit; the trainer, optax and orbax only ever see pytrees of arrays.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
from flax import nnx



@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates done so far
  params: nnx.State  # trainable variables
  rest: nnx.State  # every other variable of the model
  opt_state: Any


def split(model: nnx.Module, trainable) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable state, the rest)."""
  return nnx.split(model, trainable, ...)


def merge(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State) -> nnx.Module:
  """A fresh module from states; `copy=True` so it can be used (and its BatchNorm
  statistics updated) inside `jax.value_and_grad` under jit."""
  return nnx.merge(graphdef, params, rest, copy=True)


def full_state(state: TrainState) -> nnx.State:
  """Every variable of the model in one nnx.State (what checkpoints store)."""
  return nnx.merge_state(state.params, state.rest)


def _initializer(make_model, trainable, tx):
  def init():
    _, params, rest = split(make_model(), trainable)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest,
                      opt_state=tx.init(params))
  return init


def abstract(make_model: Callable[[], nnx.Module], trainable, tx, placement
             ) -> tuple[nnx.GraphDef, TrainState]:
  """(graphdef, the state as ShapeDtypeStructs carrying their shardings).

  `placement`: array -> NamedSharding (cvrl.core.parallel.state_placement: on which mesh,
  replicated or fsdp). Nothing is allocated: this is the restore target of a checkpoint (orbax
  reshards whatever sharding and device count wrote it) and the `out_shardings` of the
  initialiser.
  """
  graphdef, _, _ = split(nnx.eval_shape(make_model), trainable)
  shapes = jax.eval_shape(_initializer(make_model, trainable, tx))
  return graphdef, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement(x)), shapes)


def shardings(target):
  """The tree of NamedShardings of an abstract (or concrete) state."""
  return jax.tree.map(lambda x: x.sharding, target)


def create(make_model: Callable[[], nnx.Module], trainable, tx, placement
           ) -> tuple[nnx.GraphDef, TrainState]:
  """Builds model and optimizer state in one jit, placed by `placement`.

  `jax.eval_shape` gives the structure without allocating; the jit'd initialiser then
  writes every array straight into its sharding (no host copy of the full model).
  """
  graphdef, target = abstract(make_model, trainable, tx, placement)
  return graphdef, jax.jit(_initializer(make_model, trainable, tx),
                           out_shardings=shardings(target))()
