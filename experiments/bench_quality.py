"""Does self-supervised pretraining learn? Pretrained vs random init vs supervised, on CPU.

  python -m experiments.bench_quality [--methods=cvrl|all|cvrl,simclr] [--seeds=3] \\
      [--steps=N] [--workdir=/tmp/cvrl_bench_quality] [--out=DIR]

For each method and seed: pretrain with the method's recipe scaled to a CPU (R3D-18 at
1/8 width, 8 x 32 x 32 clips) on the procedural object + action videos
(`data.synthetic.kind='objects'`, cvrl.data.procedural), then measure, on held-out videos:
- linear probe top-1 (the probe job: frozen encoder, L2-normalised features, one linear
  layer, multi-view test) and kNN top-1 (the evaluate job's retrieval mode);
- the same numbers for the same architecture at random init (the probe job's
  random baseline), and for the encoder trained supervised from scratch on the labels
  for the same number of steps (the finetune job with random init): the upper bound.
gain = pretrained - random (linear top-1); gap_closed = gain / (supervised - random).
The kNN top-1 of the checkpoints saved during pretraining gives a curve over steps.

Writes OUT/quality.json (also printed as the last line of stdout: one JSON object,
{"methods": {name: {"gain", "gap_closed", "pretrained", "random", "supervised", ...}}, ...}),
OUT/quality.md (the table in the README) and, with matplotlib (the `plots` extra),
OUT/quality_knn.png (kNN top-1 over pretraining steps, one line per method, chance dashed).
`--replot=A.json[,B.json]` redraws that plot from saved results (A_knn.png), no training.

The jobs are called through the small wrappers below (`_pretrain`, `_linear_probe`,
`_knn`, `_supervised`) so that where the library moves its evaluators only they change.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
import time

import ml_collections
import numpy as np
from absl import app, flags

from cvrl.core import cli
from cvrl.core import paths
from cvrl.data import procedural
from cvrl.data.config import set_probe_augmentation
from cvrl.models.r3d import INPUTS
from experiments import letters

METHODS = ("cvrl", "simclr", "moco", "byol", "swav", "tclr", "rotation")
# Plot colours (matplotlib's) per method.
COLOURS = {"cvrl": "tab:red", "simclr": "tab:blue", "moco": "tab:green", "byol": "tab:purple",
           "swav": "tab:orange", "tclr": "tab:brown", "rotation": "tab:gray"}


def define_flags():
  global _METHODS, _SEEDS, _FIRST_SEED, _STEPS, _WORKDIR, _OUT, _CURVE_POINTS, _KEEP, _AUG, _INPUT, _BASE  # pylint: disable=global-statement
  _METHODS = flags.DEFINE_string("methods", "cvrl", f"'all' or a comma-separated subset of "
                                 f"{list(METHODS)}.")
  _SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per method (>= 1; the std needs >= 2).")
  _FIRST_SEED = flags.DEFINE_integer("first_seed", 0, "Run seeds first_seed..seeds-1 only: "
                                     "processes sharing one --workdir run seeds side by side, "
                                     "then a run from seed 0 reads them from its cache.")
  _STEPS = flags.DEFINE_integer("steps", 0, "Pretraining (and supervised) steps; 0: each "
                                "method's bench recipe.")
  _WORKDIR = flags.DEFINE_string("workdir", "/tmp/cvrl_bench_quality", "Runs go here.")
  _OUT = flags.DEFINE_string("out", "", "quality.{json,md,png} go here ('' : the workdir).")
  _CURVE_POINTS = flags.DEFINE_integer("curve_points", 4, "Checkpoints per run on the kNN curve.")
  _AUG = flags.DEFINE_enum("augmentation", "recipe", list(AUGMENTATIONS), "CVRL's augmentation: "
                           "the demo recipe's, the paper's full strength, the recipe with the "
                           "paper's colour jitter and grayscale, the recipe with background "
                           "erasing (Wang et al. 2021) on the first view, or both (comparisons "
                           "in the README).")
  global _FAMILY  # pylint: disable=global-statement
  _FAMILY = flags.DEFINE_enum("family", "objects", list(FAMILIES), "The videos: the bench's "
                              "procedural objects (--difficulty applies), or a held-out "
                              "family of moving letters with one per-video nuisance "
                              "(experiments/letters.py).")
  _INPUT = flags.DEFINE_enum("input", "", ("",) + tuple(INPUTS), "The encoder's input; "
                             "'': the base recipe's (the bench's 'med_pc', each clip less its "
                             "median frame on its first principal colour axis; the demo's "
                             "'rgb_pc', the frames on that axis; the earlier recipe's 'dif', "
                             "frame differences); any of cvrl.models.r3d.INPUTS.")
  _BASE = flags.DEFINE_enum("base_recipe", "bench", list(BASES), "The recipe every method "
                            "starts from: the demo's config with a stride per clip on "
                            "'med_pc' (BENCH_RECIPE), the demo's as it is, or the bench's "
                            "earlier recipe (EARLIER_RECIPE: the README's tables up to 'A "
                            "speed per clip').")
  _KEEP = flags.DEFINE_bool("keep", False, "Keep the run directories (default: removed "
                            "after each seed, results kept).")
  global _VIDEOS, _DIFFICULTY, _SEMI, _SEMI_STEPS  # pylint: disable=global-statement
  _SEMI = flags.DEFINE_float("semi_fraction", 0.1, "Fine-tuning on this class-balanced "
                             "fraction of the labels, from the checkpoint and from scratch "
                             "(CVRL sec. 4.3); 0: skip.")
  _SEMI_STEPS = flags.DEFINE_integer("semi_steps", 500, "Steps of each semi-supervised run.")
  _VIDEOS = flags.DEFINE_integer("videos", VIDEOS, "Training videos (rendered once, cached).")
  _DIFFICULTY = flags.DEFINE_string(
      "difficulty", HEADLINE, "The data's difficulty over the calibrated data, e.g. "
      "'colour=1,texture=1,scale=0.15:0.4' (cvrl.data.procedural.DIFFICULTY); 'calibrated': "
      "that data itself (white objects on plain grey, the easy row).")
  global _SET  # pylint: disable=global-statement
  _SET = flags.DEFINE_multi_string("set", [], "A field of every method's pretraining config "
                           "set after its recipe, 'path=value' (a Python literal; repeat the "
                           "flag for more), e.g. "
                           "'data.augmentation.clip_strides=(1,2,3)': a lever scanned on the "
                           "bench; the runs are cached under their whole config.")
  global _REPLOT  # pylint: disable=global-statement
  _REPLOT = flags.DEFINE_list("replot", [], "Only redraw the kNN plot from saved quality JSON "
                              "files (their methods together), as FIRST_knn.png beside the first.")


def parse_difficulty(text: str) -> dict:
  """'colour=1,scale=0.15:0.4' -> {'colour': 1.0, 'scale': (0.15, 0.4)} (checked);
  'calibrated' or '' -> {}."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(","))):
    if item == "calibrated":
      continue
    key, _, value = item.partition("=")
    if key not in procedural.DIFFICULTY or not value:
      raise app.UsageError(f"--difficulty: {item!r} is not one of "
                           f"{sorted(procedural.DIFFICULTY)} = value")
    out[key] = tuple(float(v) for v in value.split(":")) if key == "scale" else float(value)
  try:
    procedural.check_difficulty(out)
  except ValueError as e:
    raise app.UsageError(f"--difficulty: {e}") from None
  return out


# ---------------------------------------------------------------------------- recipes

AUGMENTATIONS = ("recipe", "paper", "paper_colour", "background",
                 "paper_colour_background")  # see recipe()
VIDEOS = 2048  # training videos of the bench data
# The headline data (--difficulty's default, the demo's): per-video random colours and a
# half-strength textured background, the nuisances of real video the calibrated data lacks.
HEADLINE = "colour=1,texture=0.5"
FAMILIES = ("objects",) + tuple(f"letters_{v}" for v in letters.VARIANTS)
STEPS = 1500  # pretraining and supervised steps of every recipe (--steps=0)
# Where the bench's recipe (base 'bench', the default) departs from the demo's: a stride
# per clip, so two clips of a video stop sharing its speed (README "A speed per clip"), and
# each clip less its median frame, so they stop sharing a still scene (README "The input
# once the speed is drawn").
BENCH_RECIPE = {"input": "med_pc", "augmentation": {"clip_strides": (1, 2, 3)}}
# The bench's recipe before it (base 'earlier'; the demo's until it moved to its colour axis
# and reversal): the README's tables up to "A speed per clip".
EARLIER_RECIPE = {"input": "dif", "temperature": 0.1,
                  "augmentation": {"contrast": 0.3, "reverse_prob": 0.0}}
BASES = {"bench": BENCH_RECIPE, "demo": {}, "earlier": EARLIER_RECIPE}  # --base_recipe
PROBE_EPOCHS = (100, 5)  # the linear probe's epochs and warm-up (the CVRL paper's)


def bench_data(data: ml_collections.ConfigDict, videos: int = VIDEOS,
               difficulty: dict | None = None, family: str = "objects") -> None:
  """The benchmark's data, in place: `videos` training and 256 test videos of the 8
  object + action classes at the calibrated difficulty (procedural.DIFFICULTY) overridden
  by `difficulty` (None: the headline data, HEADLINE), 64 frames of 48 x 48; clips of 8
  frames at stride 2, 32 x 32 crops. family 'letters_<variant>': the held-out letters
  (experiments/letters.py, 32 frames of 48 x 48) instead, written once under the system
  temp dir."""
  data.source = "synthetic"
  data.synthetic.update(kind="objects", num_train_videos=videos, num_eval_videos=256,
                        num_classes=8, num_frames=64, size=48, num_shards=8, seed=0, dir="")
  chosen = parse_difficulty(HEADLINE) if difficulty is None else difficulty
  data.synthetic.difficulty = ml_collections.ConfigDict(procedural.check_difficulty(chosen))
  data.num_train_examples = videos
  data.num_classes = 8
  data.update(crop_size=32, eval_resize=32, eval_crop_size=32)
  if family != "objects":
    variant = family.removeprefix("letters_")
    letters.use(data, variant, os.path.join(tempfile.gettempdir(),
                                            f"cvrl_letters_{variant}_{videos}"), videos)


def recipe(method: str, steps: int, seed: int, augmentation: str = "recipe",
           videos: int = VIDEOS, difficulty: dict | None = None,
           input_mode: str = "", family: str = "objects",
           base: str = "bench", overrides: tuple = ()) -> ml_collections.ConfigDict:
  """The pretraining config of `method` on the bench data (steps 0: the bench's own);
  augmentation 'paper': CVRL's full-strength augmentation instead of the demo's;
  'paper_colour': the paper's colour ops on the demo's crop; '..background': background
  erasing with its paper's settings on top. input_mode: the encoder's (model.input; '':
  the base's, else the demo's). difficulty None: the headline data. base: the demo's config with
  BASES[base]'s fields ('bench': BENCH_RECIPE; 'demo': none; 'earlier': EARLIER_RECIPE).
  overrides: 'path=value' fields set last (--set).

  Every method starts from the demo's CVRL config (encoder, data, clip shape, batch 16,
  AdamW, steps) and changes only what the method is: its objective with the heads shrunk
  alike (64 hidden, 32 out), plus the few settings `METHOD_SETTINGS` lists with why."""
  # pylint: disable=import-outside-toplevel
  import importlib
  from configs import demo
  from cvrl.data.config import default_augmentation_config
  c = demo.get_config(f"steps={steps or STEPS},probe=False,source=synthetic")
  if base not in BASES:
    raise ValueError(f"base {base!r}: choose from {list(BASES)}")
  c.objective.temperature = BASES[base].get("temperature", c.objective.temperature)
  c.data.augmentation.update(BASES[base].get("augmentation", {}))
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f"augmentation {augmentation!r}: choose from {AUGMENTATIONS}")
  if augmentation == "paper":
    c.data.augmentation = default_augmentation_config()
  elif augmentation.startswith("paper_colour"):  # the recipe's crop, the paper's colour ops
    paper = default_augmentation_config()
    c.data.augmentation.update({k: paper[k] for k in ("color_jitter_prob", "brightness",
                                                      "contrast", "saturation", "hue",
                                                      "grayscale_prob")})
  if augmentation.endswith("background"):  # the query view mixed, weight U(0, 0.3)
    c.data.augmentation.background_erase_probs = (1.0, 0.0)
  if method != "cvrl":
    module = importlib.import_module(f"cvrl.objectives.{method}")
    c.objective = ml_collections.ConfigDict(module.objective_config())
    c.objective.update({k: v for k, v in dict(head_hidden=64, head_layers=1, head_out=32,
                                                predictor_hidden=64).items()
                        if k in c.objective})
  bench_data(c.data, videos, difficulty, family)
  c.model.input = input_mode or BASES[base].get("input", c.model.input)
  if method != "cvrl":
    METHOD_SETTINGS.get(method, lambda c: None)(c)
    if steps:
      c.total_steps = steps
    c.warmup_steps = max(1, int(c.total_steps) // 10)
  c.seed = int(seed)
  c.log.update(every_steps=50, tensorboard=False)
  for item in overrides:
    set_field(c, item)
  return c


def set_field(config: ml_collections.ConfigDict, item: str) -> None:
  """'a.b.c=value' sets config.a.b.c to the Python literal `value` (a string if it is not
  one), in place; UsageError (one line) for an unknown field or a value of another type."""
  path, sep, text = item.partition("=")
  *parents, leaf = path.strip().split(".")
  try:
    value = ast.literal_eval(text.strip())
  except (ValueError, SyntaxError):
    value = text.strip()
  node = config
  try:
    for key in parents:
      node = node[key]
    if not sep or leaf not in node:
      raise KeyError(path)
    node[leaf] = value
  except (KeyError, TypeError) as e:
    raise app.UsageError(f"--set {item!r}: {e}; want an existing field, 'path=value'") from None


def _moco(c):
  # A queue of 512 keys: a quarter of the 2,048 videos, as 65,536 is of Kinetics-400.
  c.objective.update(queue_size=512, queue="global")


def _swav(c):
  # 32 prototypes for 8 classes; frozen for the first epoch (128 steps), as the paper's 1.
  c.objective.update(num_prototypes=32, freeze_prototypes_epochs=None,
                     freeze_prototypes_steps=int(c.data.num_train_examples) // c.batch_size)


def _tclr(c):
  # TCLR's clips: 10 per video of 16 frames (the 'tclr' sampler), its encoder (4 output
  # timesteps). 5x CVRL's frames per video: batch 8 and a third of the steps keep the
  # run's compute at 1.7x CVRL's.
  c.model.preset = "tclr"
  c.data.augmentation.clip_strides = ()  # its sampler's strides are its own
  c.data.num_frames = 16
  c.batch_size = c.optim.base_batch_size = 8
  c.total_steps = int(c.total_steps) // 3


def _rotation(c):
  # 3DRotNet's augmentation is crop and flip (Jing & Tian 2018); colour is no help there.
  set_probe_augmentation(c.data)


METHOD_SETTINGS = {"moco": _moco, "swav": _swav, "tclr": _tclr, "rotation": _rotation}


def _as_dict(c):
  return ml_collections.ConfigDict(c.to_dict())


# --------------------------------------------------------- wrappers around the library

def _pretrain(config, workdir: str, checkpoint_every: int) -> None:
  from cvrl.jobs import pretrain  # pylint: disable=import-outside-toplevel
  config = _as_dict(config)
  config.checkpoint.update(every_steps=max(1, checkpoint_every), keep=1000)  # all
  _stop_if_preempted(pretrain.run(pretrain.parse(config), workdir))


def _stop_if_preempted(result: dict) -> dict:
  """A job stopped by SIGTERM saved its checkpoint and returned: stop the bench there
  too, rather than measure a half-trained model."""
  if result.get("preempted"):
    raise SystemExit(f"bench_quality: stopped by SIGTERM in {result.get('job', 'a job')} "
                     f"at step {result.get('step')}")
  return result


def _probe_fields():
  """The bench's linear probe: the CVRL paper's linear evaluation schedule (100 epochs,
  5 of warm-up; SGD at its lr 32 per 1,024 clips, 1.0 at the bench's 32; its recipe is
  configs/cvrl_k600_linear.py) on cached features of one un-augmented clip
  per training video (`feature_epochs=0`), 2 clips x 1 crop at test. (At 30 epochs, the
  bench's earlier probe, the fit on L2-normalised features was still climbing: one CVRL
  checkpoint's top-1 0.43 at 30 epochs, 0.49 at 100, 0.54 at 300; README "held-out
  letters".) Without
  augmentation, as SimCLR's linear evaluation on transfer datasets (Chen et al. 2020,
  appendix): at 32 x 32 a resized crop of 0.3 of the area often cuts the object out, and
  the probe trained on such crops fits worse (0.70 against 0.80 top-1 for one CVRL
  checkpoint, README "Quality benchmark")."""
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  p = config_lib.demo_probe_fields()
  p.flip_prob = None
  p.random_baseline = True
  p.feature_epochs = 0
  p.total_epochs, p.warmup_epochs = PROBE_EPOCHS
  return p


def _run_job(job, config, workdir: str) -> dict:
  """A downstream job as cvrl.main runs it, by the function it runs it with (`cvrl.main.run`:
  config.job's `validate` once, the inputs and the workdir checked, then its `run`)."""
  from cvrl import main  # pylint: disable=import-outside-toplevel
  assert config.job == job.__name__.rsplit(".", 1)[-1], (config.job, job.__name__)
  return main.run(config, workdir)


def _linear_probe(pre_config, checkpoint_dir: str, workdir: str) -> dict:
  """{'pretrained': top1, 'random': top1} of the linear probe (same clips, same head init)."""
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import probe  # pylint: disable=import-outside-toplevel
  pre = _as_dict(pre_config)
  pre.probe = _probe_fields()
  config = config_lib.probe_config_for(pre, checkpoint_dir)
  config.probe.save_model = False
  res = _stop_if_preempted(_run_job(probe, config, workdir))
  return {"pretrained": float(res["metrics"]["top1"]),
          "random": float(res["metrics"]["random_init_top1"])}


def _knn(pre_config, workdir: str, checkpoint_dir: str = "", step: int | None = None) -> float:
  """kNN top-1 (the evaluate job's retrieval mode) of a checkpoint, or of a random-init
  encoder of the pretraining's architecture when `checkpoint_dir` is ''."""
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import evaluate  # pylint: disable=import-outside-toplevel
  c = config_lib.evaluate_config()
  c.seed = int(pre_config.seed)
  c.model = _as_dict(pre_config.model)
  c.data = _as_dict(pre_config.data)
  c.evaluate.update(mode="knn", knn_clips=2, knn_crops=1, batch_size=32, knn_k=20,
                    recall_ks=(1, 5))
  if checkpoint_dir:
    c.pretrained, c.pretrained_step = checkpoint_dir, step
  else:
    c.random_init = True
  return float(_run_job(evaluate, c, workdir)["metrics"]["knn_accuracy"])


def _supervised(pre_config, workdir: str, checkpoint_dir: str = "", label_fraction: float = 1.0,
                steps: int = 0, cache_dir: str = "") -> dict:
  """The upper bound: the same encoder trained from scratch on the labels, the
  pretraining's steps, batch and optimizer; its classifier's top-1 (same test views).
  With `checkpoint_dir`: fine-tuning from that pretraining checkpoint instead; with
  `label_fraction` < 1: on that class-balanced fraction of the labels (CVRL sec. 4.3's
  semi-supervised setting); `steps`: other than the pretraining's. From scratch, the run
  depends on the encoder, data and optimizer, not on the method: methods that share those
  (and the seed) share one run, kept in `cache_dir`."""
  from cvrl.data.config import set_probe_augmentation  # pylint: disable=import-outside-toplevel
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.jobs import finetune  # pylint: disable=import-outside-toplevel
  c = config_lib.finetune_config()
  c.seed = int(pre_config.seed)
  c.random_init = not checkpoint_dir
  c.pretrained = checkpoint_dir
  c.model = _as_dict(pre_config.model)
  c.data = set_probe_augmentation(_as_dict(pre_config.data))
  c.data.label_fraction = float(label_fraction)
  c.batch_size = int(pre_config.batch_size)
  total = int(steps or pre_config.total_steps)
  c.total_steps, c.total_epochs = total, None
  c.warmup_steps, c.warmup_epochs = max(1, total // 10), None
  o = pre_config.optim
  c.optim.update(name=str(o.name), base_lr=float(o.base_lr), head_lr=float(o.base_lr),
                 base_batch_size=int(o.base_batch_size), weight_decay=float(o.weight_decay))
  c.finetune.update(dropout=0.0, save_model=False)
  c.evaluate.update(num_clips=2, num_crops=1, batch_size=32)
  c.log.every_steps = 100
  run = lambda: {"top1": float(
      _stop_if_preempted(_run_job(finetune, c, workdir))["metrics"]["top1"])}
  if checkpoint_dir or not cache_dir:
    return run()
  return _cached(paths.join(cache_dir, f"scratch-{_digest(c)}.json"), run)


# ------------------------------------------------------------------------------ running

def _digest(config) -> str:
  """A short hash of a config's every value (the cache key of a run's results)."""
  text = json.dumps(_as_dict(config).to_dict(), sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def _cached(path: str, compute):
  """compute()'s JSON result, read from `path` when an earlier run wrote it: a bench cut
  short resumes at the first seed it had not finished."""
  if paths.as_path(path).exists():
    return paths.read_json(path)
  value = compute()
  paths.write_json(path, value)
  return value


def _stats(values) -> dict:
  v = np.asarray(values, np.float64)
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "values": [round(float(x), 4) for x in v]}


def _one_seed(config, run_dir: str, curve_points: int, semi: tuple[float, int],
              cache_dir: str) -> dict:
  """Pretrain one seed, then probe, kNN over the checkpoints, supervised and (semi[0] > 0)
  the semi-supervised pair: the seed's row of quality.json, with its kNN curve."""
  total = int(config.total_steps)
  every = max(1, total // max(1, curve_points))
  if paths.as_path(run_dir).exists():
    paths.as_path(run_dir).rmtree()
  t = time.time()
  ckpt = paths.join(run_dir, "pretrain")
  _pretrain(config, ckpt, every)
  t_pre = time.time() - t
  lin = _linear_probe(config, ckpt, paths.join(run_dir, "probe"))
  knn_rand = _knn(config, paths.join(run_dir, "knn_random"))
  steps_on_curve = sorted({min(total, every * k) for k in range(1, curve_points + 1)} | {total})
  curve = [(0, knn_rand)]
  for s in steps_on_curve:
    curve.append((s, _knn(config, paths.join(run_dir, f"knn_{s}"), ckpt, s)))
  sup = _supervised(config, paths.join(run_dir, "supervised"), cache_dir=cache_dir)
  row = {"seed": int(config.seed), "pretrained_linear": lin["pretrained"],
         "random_linear": lin["random"], "supervised_linear": sup["top1"],
         "pretrained_knn": curve[-1][1], "random_knn": knn_rand,
         "pretrain_seconds": round(t_pre, 1), "seconds": round(time.time() - t, 1),
         "knn_curve": curve}
  if semi[0] > 0:  # timed apart: the row's minutes are the four jobs above
    t = time.time()
    for init, src in (("pretrained", ckpt), ("scratch", "")):
      row[f"semi_{init}"] = _supervised(config, paths.join(run_dir, f"semi_{init}"), src,
                                        semi[0], semi[1], cache_dir)["top1"]
    row["semi_seconds"] = round(time.time() - t, 1)
  return row


def run_method(method: str, seeds: range, steps: int, workdir: str, curve_points: int,
               keep: bool, augmentation: str = "recipe", data: dict | None = None,
               semi: tuple[float, int] = (0.0, 0)) -> dict:
  """Every seed of one method; the method's entry of quality.json."""
  rows, curves, cache_dir = [], [], paths.join(workdir, "cache")
  for seed in seeds:
    config = recipe(method, steps, seed, augmentation, **(data or {}))
    key = _digest(ml_collections.ConfigDict(dict(config=config.to_dict(), semi=semi,
                                                 curve_points=curve_points)))
    run_dir = paths.join(workdir, method, f"seed{seed}")
    row = _cached(paths.join(cache_dir, f"{method}-seed{seed}-{key}.json"),
                  lambda: _one_seed(config, run_dir, curve_points, semi, cache_dir))
    if not keep:
      if paths.as_path(run_dir).exists():
        paths.as_path(run_dir).rmtree()
    curves.append(row.pop("knn_curve"))
    rows.append(row)
    print(f"bench_quality[{method}] seed {seed}: {json.dumps(row)}", flush=True)
  col = lambda k: [r[k] for r in rows]
  pre, rnd, sup = (_stats(col(f"{k}_linear")) for k in ("pretrained", "random", "supervised"))
  semi_out = None
  if semi[0] > 0:
    semi_out = {"label_fraction": semi[0], "steps": semi[1],
                "pretrained": _stats(col("semi_pretrained")),
                "scratch": _stats(col("semi_scratch")),
                "seconds": round(sum(col("semi_seconds")), 1)}
  gain = pre["mean"] - rnd["mean"]
  gains = np.subtract(col("pretrained_linear"), col("random_linear"))
  ceiling = sup["mean"] - rnd["mean"]
  return {
      "gain": gain,
      "gain_std": float(gains.std(ddof=1)) if len(gains) > 1 else 0.0,
      "gap_closed": gain / ceiling if ceiling > 0 else None,
      "pretrained": {"linear_top1": pre, "knn_top1": _stats(col("pretrained_knn"))},
      "random": {"linear_top1": rnd, "knn_top1": _stats(col("random_knn"))},
      "supervised": {"linear_top1": sup},
      "knn_curve": [[s, float(np.mean([c[i][1] for c in curves]))]
                    for i, (s, _) in enumerate(curves[0])],
      "steps": int(recipe(method, steps, 0, **(data or {})).total_steps),
      "seeds": len(seeds),
      "seconds": round(sum(col("seconds")), 1),
      "semi_supervised": semi_out,
      "per_seed": rows,
  }


# ------------------------------------------------------------------------------ reports

def markdown(results: dict) -> str:
  """The README's table: mean +- std over seeds."""
  f = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}"
  lines = ["| method | steps | pretrained linear | random linear | supervised | gain | "
           "gap closed | pretrained kNN | random kNN | minutes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for m, r in results["methods"].items():
    gap = "-" if r["gap_closed"] is None else f"{r['gap_closed']:.2f}"
    lines.append(
        f"| {m} | {r['steps']} | {f(r['pretrained']['linear_top1'])} | "
        f"{f(r['random']['linear_top1'])} | {f(r['supervised']['linear_top1'])} | "
        f"{r['gain']:+.3f} ± {r['gain_std']:.3f} | {gap} | {f(r['pretrained']['knn_top1'])} | "
        f"{f(r['random']['knn_top1'])} | {r['seconds'] / 60:.1f} |")
  semi = {m: r["semi_supervised"] for m, r in results["methods"].items()
          if r.get("semi_supervised")}
  if semi:
    lines += ["", "| method | labels | fine-tune steps | from the checkpoint | from scratch | "
              "gain | minutes |", "|---|---|---|---|---|---|---|"]
    for m, r in semi.items():
      gain = r["pretrained"]["mean"] - r["scratch"]["mean"]
      lines.append(f"| {m} | {r['label_fraction']:.0%} | {r['steps']} | {f(r['pretrained'])} | "
                   f"{f(r['scratch'])} | {gain:+.3f} | {r['seconds'] / 60:.1f} |")
  return "\n".join(lines) + "\n"


def _title(results: dict) -> str:
  """'kNN top-1 during pretraining' with the data and the seeds the curves average, on
  three lines (one line of it all overflows the figure)."""
  d = results["data"]
  seeds = sorted({int(r["seed"]) for m in results["methods"].values()
                  for r in m.get("per_seed", [])}) or list(range(int(results["seeds"])))
  seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {seeds[0]}-{seeds[-1]}"
  default = json.loads(json.dumps(procedural.DIFFICULTY))  # tuples as the JSON's lists
  hard = {k: v for k, v in d.get("difficulty", {}).items() if v != default[k]}
  extra = "".join(f"{k}={v}, " for k, v in hard.items())
  return (f"kNN top-1 during pretraining\nsynthetic '{d['kind']}' videos: {d['num_classes']} "
          f"classes, {d['num_train_videos']:,} train / {d['num_eval_videos']} test\n"
          f"{extra}{seed_text}")


def knn_figure(plt, results: dict):
  """kNN top-1 over pretraining steps, one line per method (COLOURS), chance dashed."""
  fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
  for m, r in results["methods"].items():
    steps, acc = zip(*r["knn_curve"])
    ax.plot(steps, acc, "o-", color=COLOURS.get(m, "black"), label=f"{m} ({r['steps']} steps)")
  ax.axhline(results["chance"], color="0.5", ls="--", lw=1,
             label=f"chance ({results['chance']:.3f})")
  ax.set(xlabel="pretraining step", ylabel="kNN top-1", ylim=(0, 1), title=_title(results))
  ax.grid(alpha=0.3)
  ax.legend(loc="lower right", fontsize="small")
  fig.tight_layout()
  return fig


def knn_plot(results: dict, path: str) -> bool:
  """knn_figure to `path` (PNG); False, after one warning line, without matplotlib."""
  plt = cli.pyplot("wrote the JSON and Markdown only")
  if plt is not None:
    with paths.as_path(path).open("wb") as f:
      cli.save_figure(plt, knn_figure(plt, results), f)
  return plt is not None


def replot(files: list[str]) -> str:
  """The kNN plot of the methods of the saved quality JSON files (no retraining), beside
  the first as <its name>_knn.png; its path."""
  results = None
  for path in files:
    part = paths.read_json(path)
    if results is None:
      results = part
    elif _earlier_rows(path, results) != part["methods"]:
      raise app.UsageError(f"--replot: {path} is of other data, seeds or augmentation "
                           f"than {files[0]}")
    else:
      results["methods"] = {**part["methods"], **results["methods"]}
  results["methods"] = {m: results["methods"][m] for m in METHODS if m in results["methods"]}
  out = os.path.splitext(files[0])[0] + "_knn.png"
  knn_plot(results, out)
  return out


def _earlier_rows(path: str, results: dict) -> dict:
  """The methods of an earlier quality.json in the same out dir, on the same data,
  augmentation and seeds: a run of some methods adds its rows to the table."""
  if not paths.as_path(path).exists():
    return {}
  old = paths.read_json(path)
  same = all(json.dumps(old.get(k), sort_keys=True) == json.dumps(results.get(k), sort_keys=True)
             for k in ("data", "seeds", "augmentation", "input", "base_recipe"))
  return dict(old.get("methods", {})) if same else {}


def _describe(data: dict) -> dict:
  """quality.json's "data": the procedural data's settings, or the letters' family."""
  described = recipe("cvrl", 0, 0, **{**data, "family": "objects"}).data.synthetic.to_dict()
  if data["family"] != "objects":
    described.update(kind=data["family"], difficulty={}, num_frames=32)
  return described


def main(argv):
  del argv
  if _REPLOT.value:
    print(replot(_REPLOT.value), flush=True)
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  names = METHODS if _METHODS.value == "all" else tuple(
      m.strip() for m in _METHODS.value.split(",") if m.strip())
  bad = [m for m in names if m not in METHODS]
  if bad or not names:
    raise app.UsageError(f"--methods: unknown {bad}; choose 'all' or from {list(METHODS)}")
  if not 0 <= _FIRST_SEED.value < _SEEDS.value:
    raise app.UsageError("--seeds must be >= 1 and --first_seed in [0, seeds)")
  if not 0.0 <= _SEMI.value <= 1.0 or _SEMI_STEPS.value < 1:
    raise app.UsageError("--semi_fraction must be in [0, 1] (0: skip), --semi_steps >= 1")
  if _FAMILY.value != "objects":
    letters.check_font()
  out_dir = _OUT.value or _WORKDIR.value
  paths.makedirs(out_dir)
  # Seeds after the first (and every job after pretraining) load their compiled steps.
  from cvrl.engine import loop as engine  # pylint: disable=import-outside-toplevel
  engine.enable_compilation_cache(paths.join(_WORKDIR.value, "xla_cache"))
  data = {"videos": _VIDEOS.value, "difficulty": parse_difficulty(_DIFFICULTY.value),
          "input_mode": _INPUT.value, "family": _FAMILY.value, "base": _BASE.value,
          "overrides": tuple(_SET.value)}
  results = {"methods": {}, "data": _describe(data), "chance": 1 / 8, "seeds": _SEEDS.value,
             "augmentation": _AUG.value}
  results["input"] = recipe("cvrl", 1, 0, input_mode=_INPUT.value, base=_BASE.value).model.input
  if _BASE.value != "bench":
    results["base_recipe"] = _BASE.value
  if _SET.value:
    results["set"] = list(_SET.value)
  results["methods"] = _earlier_rows(paths.join(out_dir, "quality.json"), results)
  seeds = range(_FIRST_SEED.value, _SEEDS.value)
  for m in names:
    results["methods"][m] = run_method(m, seeds, _STEPS.value, _WORKDIR.value,
                                       _CURVE_POINTS.value, _KEEP.value, _AUG.value, data,
                                       (_SEMI.value, _SEMI_STEPS.value))
    paths.write_json(paths.join(out_dir, "quality.json"), results, indent=1)  # each method
  results["methods"] = {m: results["methods"][m] for m in METHODS if m in results["methods"]}
  paths.write_text(paths.join(out_dir, "quality.md"), markdown(results))
  knn_plot(results, paths.join(out_dir, "quality_knn.png"))
  print(markdown(results), flush=True)
  print(json.dumps(results), flush=True)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
