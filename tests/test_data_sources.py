"""The data sources package and the sampler registry (issue 28): a new source is one file,
a new sampler one registered function; unknown names are one-line errors listing the names."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cvrl.data import pipeline
from cvrl.data import sampling
from cvrl.data import sources
from cvrl.data.sources import tfrecord
from test_data_pipeline import _config, _index_video, _write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(pythonpath):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=pythonpath)
  env.pop("XLA_FLAGS", None)
  return env


def _main(pythonpath, cwd, *args):
  return subprocess.run([sys.executable, "-m", "cvrl.main", *args], cwd=cwd,
                        env=_env(pythonpath), capture_output=True, text=True, timeout=900)


def _one_line(r, *needles):
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-3000:])
  assert lines[0].startswith("cvrl: error: ") and all(n in lines[0] for n in needles), lines[0]


# ------------------------------------------------------------------------------ sources

def test_the_package_lists_its_sources_and_knows_their_counts(tmp_path):
  assert {"synthetic", "tfds", "tfrecord"} <= set(sources.names())
  for name in ("synthetic", "tfds", "tfrecord"):
    assert sources.get(name).__name__ == f"cvrl.data.sources.{name}"
  cfg = _config(tmp_path, [])
  cfg.source = "synthetic"
  cfg.synthetic.update(num_classes=5, num_train_videos=20, num_eval_videos=7)
  cfg.num_train_examples = 99  # the synthetic source knows its own size
  assert sources.num_classes(cfg) == 5
  assert (sources.num_examples(cfg, "train"), sources.num_examples(cfg, "eval")) == (20, 7)
  path = str(tmp_path / "a.tfrecord")
  _write(path, [tfrecord.make_sequence_example(_index_video(4), label=i) for i in range(3)])
  cfg = _config(tmp_path, [path])
  assert sources.num_examples(cfg, "eval") == 3
  cfg.num_train_examples = 10  # stated: not counted
  assert sources.num_examples(cfg, "train") == 10
  with pytest.raises(ValueError, match="set config.data.num_classes for a tfrecord dataset"):
    sources.num_classes(cfg)
  cfg.num_classes = 4
  assert sources.num_classes(cfg) == 4


@pytest.mark.slow
def test_the_package_imports_neither_tensorflow_nor_jax():
  code = ("import sys\nfrom cvrl.data import sources\nsources.names()\n"
          "sources.get('synthetic')\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'jax')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(ROOT),
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.slow
def test_an_unknown_source_is_one_line(tmp_path):
  with pytest.raises(ValueError) as e:
    sources.get("nope")
  assert str(e.value).startswith("data.source must be one of " + ", ".join(sources.names())
                                 + ", got 'nope'")
  r = _main(ROOT, ROOT, "--config=configs/cvrl_tiny.py:steps=1", f"--workdir={tmp_path}/w",
            "--config.data.source=nope")
  _one_line(r, "data.source must be one of synthetic, tfds, tfrecord, got 'nope'")
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_new_source_is_one_file(tmp_path):
  """A copy of the package plus ONE module (the synthetic source under another name): a
  tiny pretraining job reads it by name, with nothing else edited."""
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(ROOT, "cvrl"), copy / "cvrl",
                  ignore=shutil.ignore_patterns("__pycache__"))
  text = open(os.path.join(ROOT, "cvrl", "data", "sources", "synthetic.py")).read()
  (copy / "cvrl" / "data" / "sources" / "shapes_copy.py").write_text(text)
  args = [f"--config={ROOT}/configs/cvrl_tiny.py:steps=2", f"--workdir={tmp_path}/run",
          "--config.data.source=shapes_copy", f"--config.data.synthetic.dir={tmp_path}/data",
          "--config.checkpoint.every_steps=2"]
  r = _main(str(copy), str(copy), *args)
  assert r.returncode == 0, r.stderr[-4000:]
  assert os.path.exists(tmp_path / "run" / "metrics.jsonl")
  assert sorted(os.listdir(tmp_path / "data")) and "shapes_copy" not in sources.names()
  # Without the file the name is unknown: the same command against this package.
  _one_line(_main(ROOT, ROOT, *args[:1], f"--workdir={tmp_path}/run2", *args[2:]),
            "got 'shapes_copy'")


# ----------------------------------------------------------------------------- samplers

def test_a_sampler_outside_cvrl_is_found_by_its_module_path(tmp_path):
  path = str(tmp_path / "v.tfrecord")
  _write(path, [tfrecord.make_sequence_example(_index_video(12), label=i) for i in range(2)])
  cfg = _config(tmp_path, [path])
  ds = pipeline.build_dataset(cfg, sampler={"name": "outside_cvrl.picked_frames", "frames": [9, 0, 5, 2]},
                              train=False, batch_size=2, seed=0, process_index=0,
                              process_count=1)
  batch = next(pipeline.iterate(ds))
  levels = batch["video"][:, 0].reshape(2, 4, -1).mean(-1)  # frame t has grey level 4t + 2
  np.testing.assert_allclose(levels, np.broadcast_to(4 * np.array([9, 0, 5, 2]) + 2, (2, 4)),
                             atol=2)


def test_an_unknown_sampler_is_one_line_listing_the_samplers():
  with pytest.raises(ValueError) as e:
    sampling.make_sampler({"name": "nope"}, num_frames=4, stride=1, train=True)
  assert str(e.value).startswith("the sampler must be one of cvrl, multiview, rho, single, "
                                 "tclr, got 'nope'")
