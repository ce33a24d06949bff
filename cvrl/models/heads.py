"""Heads that sit on the pooled R3D features (projection MLPs, predictors, classifiers), and
the one container of an encoder with its head."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


def l2_normalize(x, axis=-1, eps=1e-12):
  return x * jnp.reciprocal(jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), eps))


class EncoderHead(nnx.Module):
  """`.encoder` and the `.head` on its pooled features; called, the head's output (no head:
  the features). The model of every method whose trained state is these two (CVRL, TCLR,
  3DRotNet) and of the downstream classifiers."""

  def __init__(self, encoder: nnx.Module, head: nnx.Module | None = None):
    self.encoder = encoder
    self.head = head

  def __call__(self, clips):
    x = self.encoder(clips)
    return x if self.head is None else self.head(x)


class MLP(nnx.Module):
  """`num_hidden` x [Dense(hidden) -> BN? -> ReLU] -> Dense(out) (-> BN? if `bn_last`).

  CVRL's projection head is MLP(2048, 2048, 128, num_hidden=3, bn=True); BYOL's predictor
  MLP(256, 4096, 256, num_hidden=1, bn=True); TCLR's MLP(512, 512, 128, 1, bn=True, bn_last=True).
  """

  def __init__(self, in_features: int, hidden: int, out_features: int, *, num_hidden: int = 1,
               bn: bool = True, bn_last: bool = False, bn_momentum: float = 0.9,
               bn_eps: float = 1e-5, rngs: nnx.Rngs):
    layers, norms = [], []
    d = in_features
    for _ in range(num_hidden):
      # With BN right after, a bias would be redundant.
      layers.append(nnx.Linear(d, hidden, use_bias=not bn, rngs=rngs))
      norms.append(nnx.BatchNorm(hidden, momentum=bn_momentum, epsilon=bn_eps, rngs=rngs)
                   if bn else None)
      d = hidden
    self.hidden_layers = nnx.List(layers)
    self.hidden_norms = nnx.List(norms)
    self.out = nnx.Linear(d, out_features, use_bias=not bn_last, rngs=rngs)
    self.out_norm = (nnx.BatchNorm(out_features, momentum=bn_momentum, epsilon=bn_eps, rngs=rngs)
                     if bn_last else None)

  def __call__(self, x):
    for layer, norm in zip(self.hidden_layers, self.hidden_norms):
      x = layer(x)
      if norm is not None:
        x = norm(x)
      x = nnx.relu(x)
    x = self.out(x)
    return x if self.out_norm is None else self.out_norm(x)


class LinearClassifier(nnx.Module):
  """Dense(num_classes), optionally on L2-normalised features (CVRL's linear eval), dropout."""

  def __init__(self, in_features: int, num_classes: int, *, normalize: bool = True,
               dropout: float = 0.0, rngs: nnx.Rngs):
    self.normalize = normalize
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.dense = nnx.Linear(in_features, num_classes, rngs=rngs,
                            kernel_init=nnx.initializers.normal(0.01))

  def __call__(self, x):
    if self.normalize:
      x = l2_normalize(x)
    if self.dropout is not None:
      x = self.dropout(x)
    return self.dense(x)


class RotationClassifier(nnx.Module):
  """3DRotNet's head on pooled features: Dense(64) -> ReLU -> Dense(4)."""

  def __init__(self, in_features: int, hidden: int = 64, num_rotations: int = 4, *,
               rngs: nnx.Rngs):
    self.hidden = nnx.Linear(in_features, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_rotations, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))
