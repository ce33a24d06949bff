"""A component's constructor is its config schema.

A method (cvrl/objectives/) or an evaluator (cvrl/eval/) takes what the job gives it as
its first arguments (`runtime`: the encoder, the splits, ...) and its config fields as
keyword arguments, their defaults and checks in its own module. `defaults` reads those
fields off the constructors; `fields` fills them from a config section, an unknown key an
error naming the nearest valid one.
"""
from __future__ import annotations

import difflib
import inspect
import typing

import ml_collections
from ml_collections import config_dict


def defaults(cls: type, runtime: tuple[str, ...]) -> ml_collections.ConfigDict:
  """`cls`'s fields at their defaults: the keyword arguments of its constructors (a
  subclass's, then those it passes up) not named in `runtime`; a field annotated
  `X | None` holds an X or None."""
  out = {}
  for klass in reversed([k for k in cls.__mro__ if "__init__" in vars(k)][:-1]):
    for p in inspect.signature(klass.__init__).parameters.values():
      if p.name not in runtime and p.default is not inspect.Parameter.empty:
        out[p.name] = _typed(klass, p.name, p.default)
  return ml_collections.ConfigDict(out)


def _typed(klass, name: str, default):
  """A default as a config field: `X | None` typed as X, so None and an X both fit."""
  args = typing.get_args(typing.get_type_hints(klass.__init__)[name])
  if type(None) not in args:
    return default
  kind = next(a for a in args if a is not type(None))
  return config_dict.FieldReference(default, field_type=kind)


def fields(cls: type, runtime: tuple[str, ...], spec, where: str, key: str) -> dict:
  """`cls`'s keyword arguments from the config section `spec` (at `where`, e.g.
  'config.evals.knn'): its defaults with `spec`'s values, typed as the defaults; `key` is
  the field that named `cls` ('kind', 'name'), not an argument."""
  out = defaults(cls, runtime)
  for name in spec.keys():
    if name not in out and name != key:
      near = difflib.get_close_matches(name, list(out) + [key], n=1)
      hint = f"did you mean {near[0]!r}?" if near else f"valid keys: {sorted(out)}"
      raise ValueError(f"{where}: unknown key {name!r} for {key} {spec[key]!r}; {hint}")
  for name, value in spec.items():
    try:
      if name != key:
        out[name] = value
    except TypeError as e:  # a value of the wrong type for the default
      raise ValueError(f"{where}.{name}: {e}") from None
  return out.to_dict()
