"""Import the official CVRL checkpoints (TF2, model-garden ResNet3D) into the cvrl R3D.

  python -m cvrl.tools.import_tf_checkpoint --checkpoint=PREFIX --workdir=DIR \
      [--depth=50 --width=1 --prefix=backbone/]

The released weights (e.g. `r3d_1x_k600_800ep_backbone-1`) are `tf.train.Checkpoint`s of
`official.vision.modeling.backbones.resnet_3d.ResNet3D` with CVRL's settings, which is
exactly the 'cvrl' R3D preset (TF 'SAME' padding, the same kernel layout
(kt, kh, kw, in, out)). Every backbone variable is mapped; a checkpoint whose variables or
shapes do not fit is refused with the names that do not. The result is a pretraining
checkpoint (`cvrl.engine.checkpoint` layout) that `probe` and `evaluate` read with
`config.pretrained=DIR`. Only TensorFlow's checkpoint reader is needed, not the model
garden. The projection head is not part of the released backbone checkpoints: it is
initialised afresh (seed 0), which probing and evaluation never use.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable

import numpy as np

from cvrl import config_lib, objectives
from cvrl.core import paths
from cvrl.engine import checkpoint
from cvrl.models.r3d import DEPTHS

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Keras names of the layers of one model-garden BottleneckBlock3D -> cvrl sub-module.
_BLOCK_LAYERS = (("_temporal_conv", "_norm1", "conv1"), ("_spatial_conv", "_norm2", "conv2"),
                 ("_expand_conv", "_norm3", "conv3"), ("_shortcut_conv", "_norm0", "shortcut"))
_BN_FIELDS = (("gamma", "scale"), ("beta", "bias"), ("moving_mean", "mean"),
              ("moving_variance", "var"))
_STEM_KERNEL = re.compile(r"^(?P<prefix>(?:.*/)?)layer_with_weights-0/kernel$")
_LAYER = re.compile(r"^layer_with_weights-(\d+)/")
_MAX_LISTED = 12


class CheckpointMismatch(ValueError):
  """The TF checkpoint does not fit the cvrl R3D; the message names every misfit."""


def resolve_checkpoint(path: str) -> str:
  """A checkpoint prefix from a prefix or a directory holding one (newest wins)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      indexes = sorted(tf.io.gfile.glob(os.path.join(path, "*.index")))
      if len(indexes) != 1:
        raise FileNotFoundError(f"no single TF checkpoint in {path} (found {len(indexes)} "
                                "*.index files); pass --checkpoint=PREFIX")
      latest = indexes[0][:-len(".index")]
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"no TF checkpoint at {path} (expected {path}.index)")
  return path


def read_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
  """{variable name (object path, without the '.ATTRIBUTES' suffix): shape}."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return {name[:-len(_SUFFIX)]: tuple(shape) for name, shape in tf.train.list_variables(prefix)
          if name.endswith(_SUFFIX)}


def find_backbone_prefix(shapes: dict[str, tuple[int, ...]]) -> str:
  """Where the ResNet3D sits in the object graph, found by its stem: a conv kernel
  (kt, 7, 7, 3, C) as the first weighted layer of a Keras model. 'backbone/' for the
  released files; 'model/layer_with_weights-0/' or 'model/backbone/' for other layouts."""
  found = sorted(m.group("prefix") for name, shape in shapes.items()
                 if (m := _STEM_KERNEL.match(name)) and len(shape) == 5
                 and shape[1:4] == (7, 7, 3))
  if len(found) == 1:
    return found[0]
  if not found:
    raise CheckpointMismatch(
        "no ResNet3D backbone in this checkpoint: no variable '<prefix>layer_with_weights-0/"
        "kernel' of shape (kt, 7, 7, 3, C); variables: " + _listing(sorted(shapes)))
  raise CheckpointMismatch(f"several ResNet3D backbones in this checkpoint, at {found}; "
                           "pick one with --prefix")


def infer_architecture(shapes: dict[str, tuple[int, ...]], prefix: str) -> tuple[int, float]:
  """(depth, width) from the number of blocks and the stem's channels."""
  layers = {int(m.group(1)) for name in shapes if name.startswith(prefix)
            and (m := _LAYER.match(name[len(prefix):]))}
  num_blocks = len(layers) - 2  # stem conv + stem BN
  depths = [d for d, (kind, blocks) in DEPTHS.items()
            if kind == "bottleneck" and sum(blocks) == num_blocks]
  if len(depths) != 1:
    raise CheckpointMismatch(
        f"{num_blocks} residual blocks under {prefix!r}: no bottleneck R3D depth has that "
        f"many (depths: { {d: sum(b) for d, (k, b) in DEPTHS.items() if k == 'bottleneck'} })")
  return depths[0], shapes[prefix + "layer_with_weights-0/kernel"][-1] / 64


def tf_to_cvrl_names(depth: int) -> dict[str, tuple]:
  """{TF name relative to the backbone: cvrl encoder state path} for the 'cvrl' preset.

  Keras numbers the weighted layers of the functional ResNet3D in build order: stem conv
  (0), stem BN (1), then one BottleneckBlock3D per residual block. A block's shortcut
  conv exists where its input width differs from its output (every stage's first block).
  """
  kind, blocks = DEPTHS[depth]
  if kind != "bottleneck":
    raise ValueError(f"the model-garden ResNet3D has bottleneck blocks only; depth {depth} "
                     "has basic blocks")
  names = {"layer_with_weights-0/kernel": ("stem", "conv", "kernel")}
  for tf_field, field in _BN_FIELDS:
    names[f"layer_with_weights-1/{tf_field}"] = ("stem", "bn", field)
  k = 2
  for stage, n in enumerate(blocks):
    for block in range(n):
      for tf_conv, tf_bn, conv in _BLOCK_LAYERS:
        if conv == "shortcut" and block > 0:
          continue
        path = ("stages", stage, block, conv)
        names[f"layer_with_weights-{k}/{tf_conv}/kernel"] = (*path, "conv", "kernel")
        for tf_field, field in _BN_FIELDS:
          names[f"layer_with_weights-{k}/{tf_bn}/{tf_field}"] = (*path, "bn", field)
      k += 1
  return names


def _listing(items: Iterable[str]) -> str:
  items = list(items)
  shown = ", ".join(items[:_MAX_LISTED])
  return shown + (f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def match(shapes: dict[str, tuple[int, ...]], prefix: str, expected: dict[tuple, tuple[int, ...]],
          depth: int) -> dict[str, tuple]:
  """{full TF name: cvrl path} once every variable fits; else CheckpointMismatch.

  `expected`: the cvrl encoder's {state path: shape}. Everything under `prefix` must map
  to it (no leftovers), every cvrl variable must be found, and shapes must agree.
  """
  names = tf_to_cvrl_names(depth)
  unmapped_cvrl = sorted(set(expected) - set(names.values()))
  if unmapped_cvrl:  # the preset and this mapping disagree: a bug here, not in the file
    raise AssertionError(f"cvrl variables with no TF name: {unmapped_cvrl[:_MAX_LISTED]}")
  present = {n[len(prefix):]: s for n, s in shapes.items() if n.startswith(prefix)}
  missing = sorted(set(names) - set(present), key=_natural)
  unexpected = sorted(set(present) - set(names), key=_natural)
  wrong = [f"{prefix}{n} {present[n]} (cvrl {'.'.join(map(str, names[n]))} wants "
           f"{expected[names[n]]})" for n in sorted(set(names) & set(present), key=_natural)
           if tuple(present[n]) != tuple(expected[names[n]])]
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing: " + _listing(prefix + n for n in missing))
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected: " + _listing(prefix + n for n in unexpected))
  if wrong:
    problems.append(f"{len(wrong)} with the wrong shape: " + _listing(wrong))
  if problems:
    raise CheckpointMismatch(f"the checkpoint does not fit the cvrl R3D-{depth} "
                             f"('cvrl' preset): " + "; ".join(problems))
  return {prefix + n: path for n, path in names.items()}


def _natural(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def import_config(depth: int, width: float):
  """The pretraining config stored with the imported weights: CVRL's, at this size."""
  config = config_lib.pretrain_config("cvrl")
  config.model.depth = int(depth)
  config.model.width = float(width)
  config.model.preset = "cvrl"
  config.model.dtype = "float32"
  return config


def write_pretrained(workdir: str, model, config, step: int = 0) -> str:
  """Saves `model` (the CVRL objective's NNX model) in the pretraining checkpoint layout
  (`cvrl.engine.checkpoint`: items 'model' and 'config'), which `load_pretrained` reads."""
  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp
  from flax import nnx
  directory = os.fspath(paths.as_path(workdir) / checkpoint.CHECKPOINT_DIR)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(directory, options=options,
                             handler_registry=checkpoint.handlers()) as mgr:
    if step in mgr.all_steps():
      raise FileExistsError(f"{directory} already holds a checkpoint of step {step}")
    mgr.save(step, args=ocp.args.Composite(
        model=ocp.args.PyTreeSave(nnx.state(model)),
        config=ocp.args.JsonSave(config_lib.as_dict(config))))
  return paths.join(directory, str(step))


def build_with_encoder(make, arrays: dict[tuple, np.ndarray]):
  """The module `make()` builds, its `.encoder` variables set to `arrays` ({state path:
  value}, every one), everything else initialised as usual. Only the non-encoder part is
  initialised (in one jit): initialising an R3D-50 only to overwrite it takes ~40 s on CPU.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  from flax import nnx
  is_encoder = nnx.PathContains("encoder")
  graphdef, encoder, _ = nnx.split(nnx.eval_shape(make), is_encoder, ...)
  rest = jax.jit(lambda: nnx.split(make(), is_encoder, ...)[2])()
  flat = encoder.flat_state()
  if {tuple(p[1:]) for p, _ in flat} != set(arrays):
    raise AssertionError("the encoder values do not cover the encoder exactly")
  for path, variable in flat:
    variable.set_value(jax.device_put(arrays[tuple(path[1:])]))
  return nnx.merge(graphdef, encoder, rest)


def import_checkpoint(checkpoint: str, workdir: str, *, depth: int | None = None,
                      width: float | None = None, prefix: str | None = None) -> dict:
  """Reads, checks, maps and writes; returns a report (also saved as import.json)."""
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from flax import nnx

  source = resolve_checkpoint(checkpoint)
  shapes = read_shapes(source)
  if prefix is None:
    prefix = find_backbone_prefix(shapes)
  elif prefix and not prefix.endswith("/"):
    prefix += "/"
  found_depth, found_width = infer_architecture(shapes, prefix)
  depth = found_depth if depth is None else int(depth)
  width = found_width if width is None else float(width)
  config = import_config(depth, width)
  objective = objectives.method(**config_lib.method_args(config))
  abstract = nnx.eval_shape(lambda: objective.build(nnx.Rngs(0)))
  expected = {tuple(p): tuple(v.shape) for p, v in nnx.state(abstract.encoder).flat_state()}
  mapping = match(shapes, prefix, expected, depth)  # refuses before anything compiles

  reader = tf.train.load_checkpoint(source)
  arrays = {path: np.asarray(reader.get_tensor(name + _SUFFIX), np.float32)
            for name, path in mapping.items()}
  model = build_with_encoder(lambda: objective.build(nnx.Rngs(0)), arrays)
  path = write_pretrained(workdir, model, config)
  ignored = sorted(n for n in shapes if n not in mapping)
  report = {"source": os.fspath(paths.as_path(source)), "prefix": prefix, "depth": depth,
            "width": width, "variables": len(mapping),
            "backbone_params": int(sum(np.prod(expected[p]) for p in expected
                                       if p[-1] in ("kernel", "scale", "bias"))),
            "ignored": ignored, "checkpoint": path}
  paths.write_json(paths.join(workdir, "import.json"), report, indent=1)
  return report


def define_flags(flag_values=None) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  fv = flags.FLAGS if flag_values is None else flag_values
  flags.DEFINE_string("checkpoint", None, "TF checkpoint prefix (or a directory holding one), "
                      "e.g. r3d_1x_k600_800ep_backbone-1", required=True, flag_values=fv)
  flags.DEFINE_string("workdir", None, "Where the cvrl checkpoint goes.", required=True,
                      flag_values=fv)
  flags.DEFINE_integer("depth", None, "R3D depth (default: inferred from the checkpoint).",
                       flag_values=fv)
  flags.DEFINE_float("width", None, "Width multiplier (default: inferred from the checkpoint).",
                     flag_values=fv)
  flags.DEFINE_string("prefix", None, "Object path of the backbone in the checkpoint, e.g. "
                      "'backbone/' (default: found by its stem conv).", flag_values=fv)


def run(fv) -> dict:
  """The command line's work on parsed flags; a checkpoint that does not fit exits 2."""
  try:
    report = import_checkpoint(fv.checkpoint, fv.workdir, depth=fv.depth, width=fv.width,
                               prefix=fv.prefix)
  except (CheckpointMismatch, FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"import_tf_checkpoint: error: {e}", flush=True)
    raise SystemExit(2) from None
  print(json.dumps({k: v for k, v in report.items() if k != "ignored"}
                   | {"ignored": len(report["ignored"])}), flush=True)
  return report


def main(argv):
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  run(flags.FLAGS)


if __name__ == "__main__":
  from cvrl.core import cli  # pylint: disable=ungrouped-imports
  define_flags()
  cli.run(main)
