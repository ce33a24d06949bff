"""cvrl.engine.pictures and `python -m cvrl.tools.show_clips`: the first batch as the train
step sees it, laid out a row per video, views side by side, frames across; each method's
views; pretraining's TensorBoard picture and its switch; the command on the demo, on
TFRecord shards from cvrl.data.convert (a GIF), and its one-line errors."""
import glob
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import tensorflow as tf

from configs import cvrl_tiny, demo_probe, rotation_tiny, tclr_tiny
from cvrl import config_lib, objectives
from cvrl.core.errors import ConfigError
from cvrl.data import convert, device, sources
from cvrl.engine import pictures, tasks
from cvrl.jobs import pretrain
from cvrl.tools import show_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mosaic_puts_every_frame_of_every_view_of_every_video_in_its_cell():
  n, v, t, h, w = 2, 3, 4, 5, 6
  values = (np.arange(n * v * t).reshape(n, v, t) + 1) / (n * v * t + 1)
  clips = np.broadcast_to(values[..., None, None, None], (n, v, t, h, w, 3))
  img = pictures.mosaic(clips)
  view_w = t * w + (t - 1) * pictures.FRAME_GAP
  assert img.shape == (n * h + (n - 1) * pictures.ROW_GAP,
                       v * view_w + (v - 1) * pictures.VIEW_GAP, 3)
  filled = np.zeros(img.shape[:2], bool)
  for i in range(n):
    for j in range(v):
      for k in range(t):
        y = i * (h + pictures.ROW_GAP)
        x = j * (view_w + pictures.VIEW_GAP) + k * (w + pictures.FRAME_GAP)
        assert (img[y:y + h, x:x + w] == round(values[i, j, k] * 255)).all(), (i, j, k)
        filled[y:y + h, x:x + w] = True
  assert (img[~filled] == pictures.BACKGROUND).all()
  assert pictures.view_centres(clips.shape) == [view_w / 2 + j * (view_w + pictures.VIEW_GAP)
                                                for j in range(v)]


def test_each_method_shows_the_views_its_loss_takes():
  video = np.random.default_rng(0).random((2, 1, 3, 8, 8, 3)).astype(np.float32)
  rotated, names = objectives.method(**config_lib.method_args(rotation_tiny.get_config())).shown_views(video)
  assert names == ["rotated 0°", "rotated 90°", "rotated 180°", "rotated 270°"]
  for k in range(4):  # view k: every frame turned k quarter turns in the (H, W) plane
    np.testing.assert_array_equal(rotated[:, k], np.rot90(video[:, 0], k, axes=(2, 3)))
  ten = np.zeros((1, 10, 2, 4, 4, 3), np.float32)
  same, names = objectives.method(**config_lib.method_args(tclr_tiny.get_config())).shown_views(ten)
  assert same is ten and names == [f"{kind} {aug}" for aug in "AB" for kind in
                                   ("sparse", "dense 1", "dense 2", "dense 3", "dense 4")]


@pytest.mark.slow
def test_first_batch_is_the_batch_the_train_step_finishes():
  c = cvrl_tiny.get_config()
  sources.prepare(c.data, ["train"])
  objective = objectives.method(**config_lib.method_args(c))
  clips, names = pictures.first_batch(c.data, objective, 3, seed=c.seed, batch_size=c.batch_size)
  assert names == ["clip 1", "clip 2"] and clips.shape == (3, 2, 4, 16, 16, 3)
  # what the loop hands the step: the task's batches from step 0, finished in the step
  task = tasks.PretrainTask(tasks.Training(**config_lib.training(c)), c.data, objective)
  batches, _ = task.batches(
      batch_size=int(c.batch_size), start_step=0, process_index=0, process_count=1)
  batch = next(iter(batches))
  step_sees = np.asarray(device.finish_batch(batch, c.data)["video"])[:3]
  np.testing.assert_allclose(clips, step_sees, atol=1e-5)
  raw = batch["video"][:3] / 255.0  # the colour ops did change the clips
  assert np.abs(clips - raw).max() > 0.1


def _events(workdir):
  """{tag: tensor proto} of every summary in workdir's event files."""
  out = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for e in tf.compat.v1.train.summary_iterator(path):
      for v in e.summary.value:
        out[v.tag] = (v.tensor, v.metadata.plugin_data.plugin_name, e.step)
  return out


@pytest.mark.slow
def test_pretraining_draws_its_first_batch_to_tensorboard_unless_switched_off(tmp_path):
  c = cvrl_tiny.get_config()
  c.log.tensorboard = True  # the tiny configs turn it off
  sources.prepare(c.data, ["train"])
  assert pretrain.picture_dir(c.log, "W") == "W"
  objective = objectives.method(**config_lib.method_args(c))
  task = tasks.PretrainTask(tasks.Training(**config_lib.training(c)), c.data, objective,
                            picture_dir=str(tmp_path))
  batches, _ = task.batches(batch_size=int(c.batch_size), start_step=0, process_index=0,
                            process_count=1)
  first = next(iter(batches))
  tensor, plugin, step = _events(str(tmp_path))[pictures.TAG]
  assert plugin == "images" and step == 0
  w, h, png = tensor.string_val
  image = tf.io.decode_png(png).numpy()
  assert image.shape == (int(h), int(w), 3)
  clips, _ = pictures.views(first, c.data, objective, 4)
  assert np.abs(image.astype(int) - pictures.mosaic(clips)).max() <= 1
  for key in ("tensorboard", "first_batch_picture"):
    c.log[key] = False
    assert pretrain.picture_dir(c.log, "W") == ""
    c.log[key] = True
  resumed, _ = task.batches(batch_size=int(c.batch_size), start_step=3, process_index=0,
                            process_count=1)
  next(iter(resumed))  # a resumed run draws nothing more
  assert len(glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))) == 1


def test_bad_arguments_are_config_errors():
  c = cvrl_tiny.get_config()
  for out, videos, match in (("clips.jpg", 4, "--out must name a .png or .gif"),
                             ("clips.png", 0, "--videos must be >= 1")):
    with pytest.raises(ConfigError, match=match):
      show_clips.checked(c, out, videos)
  with pytest.raises(ConfigError, match=r"unexpected arguments \['x'\]"):
    show_clips.checked(c, "clips.png", 4, ["x"])
  with pytest.raises(ConfigError, match="--config is required"):
    show_clips.checked(None, "clips.png", 4)
  with pytest.raises(ConfigError, match="give a pretraining config"):
    show_clips.checked(demo_probe.get_config(), "clips.png", 4)
  c.data.source = "tfrecord"
  c.data.train_paths = "/nowhere/train-*"
  with pytest.raises(ConfigError, match="/nowhere/train-"):
    show_clips.checked(c, "clips.png", 4)


def _run(*args):
  return subprocess.run([sys.executable, "-m", "cvrl.tools.show_clips", *args],
                        capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)


@pytest.mark.slow
def test_the_command_draws_the_demo_and_errs_in_one_line(tmp_path):
  out = _run("--config=configs/demo.py:videos=64", f"--out={tmp_path / 'demo.png'}",
             "--videos=2")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith(f"2 videos x 2 views -> {tmp_path / 'demo.png'}")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  img = plt.imread(str(tmp_path / "demo.png"))
  assert img.shape[1] > 2 * 8 * 32 * 2 and img.shape[0] > 2 * 32 * 2  # zoomed, labelled
  bad = _run("--config=configs/demo.py", f"--out={tmp_path / 'demo.jpg'}")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      f"cvrl: error: --out must name a .png or .gif file, got '{tmp_path / 'demo.jpg'}'"]
  helped = _run("--help")
  assert helped.returncode == 0 and all(f in helped.stdout for f in ("--out", "--videos",
                                                                      "--config"))


def _write_video(path, seed, frames=12, h=24, w=32):
  """A bright square moving right over noise: frames that differ in time."""
  rng = np.random.default_rng(seed)
  base = (rng.random((h, w, 3)) * 100).astype(np.uint8)
  with av.open(path, "w") as c:
    s = c.add_stream("mpeg4", rate=8)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    for t in range(frames):
      f = base.copy()
      f[8:16, 2 * t:2 * t + 8] = 250
      for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        c.mux(p)
    for p in s.encode():
      c.mux(p)


@pytest.mark.slow
def test_a_gif_of_converted_tfrecord_shards_plays_the_frames_in_order(tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for k in range(4):
    os.makedirs(tmp_path / "videos" / f"c{k % 2}", exist_ok=True)
    _write_video(str(tmp_path / "videos" / f"c{k % 2}" / f"v{k}.mp4"), k)
  convert.convert(convert.list_folder(str(tmp_path / "videos")), str(tmp_path / "shards"),
                  num_shards=2, short_side=24, workers=0, progress=False)
  overrides = [f"--config.data.train_paths={tmp_path / 'shards' / '*.tfrecord'}",
               "--config.data.source=tfrecord", "--config.data.num_train_examples=4",
               "--config.data.num_classes=2", "--config.batch_size=4"]
  out = _run("--config=configs/cvrl_tiny.py", *overrides, f"--out={tmp_path / 'c.gif'}",
             "--videos=2")
  assert out.returncode == 0, out.stderr[-2000:]
  c = cvrl_tiny.get_config()
  c.data.update(source="tfrecord", train_paths=str(tmp_path / "shards" / "*.tfrecord"),
                num_train_examples=4, num_classes=2)
  c.batch_size = 4  # the 4 converted videos fill one global batch
  clips, _ = pictures.first_batch(c.data, objectives.method(**config_lib.method_args(c)), 2, seed=c.seed,
                              batch_size=c.batch_size)
  gif = Image.open(tmp_path / "c.gif")
  assert gif.n_frames == clips.shape[2] == 4
  zoom = show_clips.scale(clips, pictures.mosaic(clips[:, :, :1]).shape[1])
  for t in range(gif.n_frames):
    gif.seek(t)
    frame = np.asarray(gif.convert("RGB"), np.float32)[::zoom, ::zoom]
    expect = pictures.mosaic(clips[:, :, t:t + 1]).astype(np.float32)
    assert frame.shape == expect.shape
    assert np.abs(frame - expect).mean() < 4, t  # GIF's palette, else the same frame t
