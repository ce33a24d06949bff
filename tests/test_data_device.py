"""Device-side finishing: same pixels as the host path, op definitions, pass-through, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cvrl.data import augmentation as A
from cvrl.data import config as config_lib
from cvrl.data import device
from cvrl.data import photometric as P
from cvrl.data import pipeline
from cvrl.data.sources import tfrecord

STRONG = A.AugmentSpec(color_jitter_prob=0.9, grayscale_prob=0.3, blur_probs=(0.6,),
                       solarize_probs=(0.4,))
TCLR_EXTRAS = dict(gray_gamma_prob=0.4, channel_drop_prob=0.35, erase_prob=0.6, erase_size=0.4)
BACKGROUND = dict(background_erase_probs=(1.0, 0.0))  # the paper's
STRONG_TCLR = A.AugmentSpec(color_jitter_prob=0.9, grayscale_prob=0.3, blur_probs=(0.6,),
                            solarize_probs=(0.4,), **TCLR_EXTRAS)


def _smooth(rng, shape):
  """Images with texture and flat areas (exercise clipping, hue wrap and blur)."""
  coarse = rng.random(shape[:-3] + (5, 6, 3)).astype(np.float32)
  flat = coarse.reshape((-1, 5, 6, 3))
  img = tf.image.resize(flat, shape[-3:-1], 'bicubic').numpy().reshape(shape)
  return np.clip(img + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)


def _draw(spec, n, view=0, radius=3, seed=0, out_size=40):
  keys = [tf.constant([seed, i], tf.int64) for i in range(n)]
  return np.stack([A.draw_photometric(tf.random.stateless_uniform([A.NUM_DRAWS], k), spec, view,
                                      radius, out_size).numpy() for k in keys])


def _close(a, b, atol, frac=1e-4):
  """All but a tiny fraction of pixels within atol (flags at exact thresholds may flip)."""
  bad = np.abs(np.asarray(a) - np.asarray(b)) > atol
  assert bad.mean() <= frac, (bad.mean(), np.abs(np.asarray(a) - np.asarray(b)).max())


@pytest.mark.parametrize('spec', [STRONG, STRONG_TCLR], ids=['cvrl', 'tclr_extras'])
def test_device_ops_equal_host_ops_for_drawn_parameters(spec):
  rng = np.random.default_rng(0)
  n, size = 8, 40  # radius 2: 5-tap blur
  x = _smooth(rng, (n, 1, 2, size, size, 3))
  params = _draw(spec, n, radius=2)
  assert params[:, P.JITTER].sum() >= 6 and params[:, P.BLUR].sum() >= 3
  if spec is STRONG_TCLR:  # every extra drawn on some clip, off on others
    for i in (P.GRAY_GAMMA, P.GAMMA, P.CHANNEL_DROP, P.ERASE):
      assert 0 < params[:, i].sum() < n, i
  host = A.Photometric(spec, size // 10, jit=False)
  ref = np.stack([host(tf.constant(x[i, 0] * 255), tf.constant(params[i])).numpy() for i in range(n)])
  out = jax.jit(device.apply_photometric)(x, params[:, None])
  assert out.shape == x.shape and out.dtype == jnp.float32
  _close(out[:, 0], ref, 2e-5)
  # per frame (the inconsistent ablation): each frame its own vector, contrast on its own mean
  frames = _draw(spec, n * 2, radius=2, seed=1).reshape(n, 1, 2, P.SIZE)
  ref = np.stack([np.concatenate([host(tf.constant(x[i, 0, t:t + 1] * 255), tf.constant(frames[i, 0, t])).numpy()
                                  for t in range(2)]) for i in range(n)])
  _close(jax.jit(device.apply_photometric)(x, frames)[:, 0], ref, 2e-5)


def _neutral(**values):
  p = np.zeros(P.SIZE, np.float32)
  p[P.BRIGHTNESS] = p[P.CONTRAST] = p[P.SATURATION] = 1.0
  p[P.ORDER] = [0, 1, 2, 3]
  p[P.SIGMA] = 1.0
  for k, v in values.items():
    p[getattr(P, k.upper())] = v
  return p


def test_device_ops_match_their_definitions():
  rng = np.random.default_rng(1)
  x = _smooth(rng, (1, 1, 2, 20, 20, 3))
  apply = jax.jit(device.apply_photometric)  # one compile: the parameters are data
  run = lambda **kw: np.asarray(apply(x, _neutral(**kw)[None, None]))[0, 0]
  clip = x[0, 0]
  # brightness multiplies; contrast works around the per-channel mean of the whole clip
  np.testing.assert_allclose(run(jitter=1, brightness=1.7), np.clip(clip * 1.7, 0, 1), atol=1e-6)
  m = clip.mean(axis=(0, 1, 2), keepdims=True)
  np.testing.assert_allclose(run(jitter=1, contrast=0.3), np.clip((clip - m) * 0.3 + m, 0, 1), atol=1e-6)
  # saturation and hue: TF's own CPU kernels as the reference
  np.testing.assert_allclose(run(jitter=1, saturation=1.6),
                             np.clip(tf.image.adjust_saturation(clip, 1.6).numpy(), 0, 1), atol=2e-6)
  for h in (-0.19, 0.07):
    np.testing.assert_allclose(run(jitter=1, hue=h), np.clip(tf.image.adjust_hue(clip, h).numpy(), 0, 1),
                               atol=2e-6)
  np.testing.assert_allclose(run(jitter=0, brightness=1.7, hue=0.1), clip, atol=1e-7)  # flag off
  # order: contrast then brightness differs from brightness then contrast
  p = _neutral(jitter=1, brightness=1.6, contrast=0.4)
  p[P.ORDER] = [1, 0, 2, 3]
  cb = np.clip((clip - m) * 0.4 + m, 0, 1)
  ref = np.clip(cb * 1.6, 0, 1)
  np.testing.assert_allclose(np.asarray(apply(x, p[None, None]))[0, 0], ref, atol=1e-5)
  # grayscale (tf.image.rgb_to_grayscale weights), solarization, both
  g = np.repeat((clip @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None], 3, -1)
  np.testing.assert_allclose(run(grayscale=1), g, atol=1e-6)
  np.testing.assert_allclose(run(solarize=1), np.where(clip < 0.5, clip, 1 - clip), atol=1e-7)
  np.testing.assert_allclose(run(grayscale=1, solarize=1), np.where(g < 0.5, g, 1 - g), atol=1e-6)
  np.testing.assert_array_equal(run(), clip)  # nothing on: the pixels come back exactly


@pytest.mark.parametrize('sigma', [0.4, 1.7])
def test_blur_is_the_reference_depthwise_convolution(sigma):
  x = np.random.default_rng(2).random((2, 40, 40, 3)).astype(np.float32)
  radius = 11  # 23 taps, as at 224 px
  r = np.arange(-radius, radius + 1)
  w = np.exp(-r ** 2 / (2 * sigma ** 2))
  w = (w / w.sum()).astype(np.float32)
  ref = tf.nn.depthwise_conv2d(x, np.tile(w.reshape(1, -1, 1, 1), [1, 1, 3, 1]), [1] * 4, 'SAME')
  ref = tf.nn.depthwise_conv2d(ref, np.tile(w.reshape(-1, 1, 1, 1), [1, 1, 3, 1]), [1] * 4, 'SAME').numpy()
  blur = lambda apply, taps: np.asarray(device.gaussian_blur(
      x, jnp.full((2, 1, 1, 1), sigma), jnp.asarray(apply).reshape(2, 1, 1, 1), radius, taps))
  out = blur([True, False], radius)
  np.testing.assert_allclose(out[0], ref[0], atol=1e-6)
  np.testing.assert_array_equal(out[1], x[1])  # not blurred: unit impulse, exact
  # truncated at 4 sigma (the default): within the dropped weight
  np.testing.assert_allclose(blur([True, True], 8), ref, atol=1e-4)
  cfg = config_lib.default_data_config()
  assert device.blur_taps(cfg, 224) == 8 and device.blur_taps(None, 224) == 11
  cfg.augmentation.blur_truncate_sigmas = 0.0
  assert device.blur_taps(cfg, 224) == 11


def test_finish_batch_pass_through_eval_scaling_and_errors():
  rng = np.random.default_rng(3)
  floats = {'video': rng.random((2, 1, 2, 8, 8, 3)).astype(np.float32), 'label': np.arange(2)}
  assert device.finish_batch(floats) is floats  # old callers: unchanged
  u8 = (floats['video'] * 255).astype(np.uint8)
  out = device.finish_batch({'video': u8, 'label': floats['label'], 'mask': np.ones(2)})
  assert out['video'].dtype == jnp.float32 and set(out) == {'video', 'label', 'mask'}
  np.testing.assert_allclose(out['video'], u8 / 255.0, atol=1e-7)
  params = np.stack([_neutral(solarize=1), _neutral()])[:, None]
  out = jax.jit(device.finish_batch)({'video': u8, 'photometric': params, 'label': floats['label']})
  assert 'photometric' not in out  # consumed
  np.testing.assert_allclose(out['video'][1], u8[1] / 255.0, atol=1e-7)
  s = u8[0] / 255.0
  np.testing.assert_allclose(out['video'][0], np.where(s < 0.5, s, 1 - s), atol=1e-6)
  with pytest.raises(ValueError, match='do not match'):
    device.finish_batch({'video': u8, 'photometric': params[:, 0, 0]})


def test_finish_batch_sharded_over_a_mesh_equals_one_device():
  devices = np.array(jax.devices()[:8])
  mesh = Mesh(devices, ('data',))
  n = len(devices)
  rng = np.random.default_rng(4)
  video = (_smooth(rng, (n, 1, 2, 24, 24, 3)) * 255).astype(np.uint8)
  params = _draw(STRONG, n, radius=1).reshape(n, 1, P.SIZE)
  batch = {'video': video, 'photometric': params, 'label': np.arange(n, dtype=np.int32)}
  shard = NamedSharding(mesh, PartitionSpec('data'))
  sharded = jax.device_put(batch, shard)
  finish = jax.jit(device.make_finish(config_lib.default_data_config()), out_shardings=shard)
  out = finish(sharded)
  assert out['video'].sharding.is_equivalent_to(shard, 6)
  single = jax.jit(device.make_finish(config_lib.default_data_config()))(batch)
  np.testing.assert_allclose(np.asarray(out['video']), np.asarray(single['video']), atol=1e-6)


def _texture_video(seed, frames=12, h=28, w=36):
  rng = np.random.default_rng(seed)
  coarse = rng.random((frames, 4, 5, 3)).astype(np.float32)
  video = tf.image.resize(coarse, [h, w], 'bicubic').numpy().clip(0, 1) * 255
  return [tf.io.encode_jpeg(f.astype(np.uint8), quality=95).numpy() for f in video]


@pytest.mark.slow
@pytest.mark.parametrize('extras', ['', 'tclr', 'background'])
def test_device_path_equals_host_path_for_the_same_seed(tmp_path, extras):
  """The key check: data.photometric='device' + finish_batch gives the host path's clips
  (also with TCLR's gray-gamma / channel drop / erasing on, or background erasing)."""
  more = {'': {}, 'tclr': TCLR_EXTRAS, 'background': BACKGROUND}[extras]
  path = str(tmp_path / 'v.tfrecord')
  with tf.io.TFRecordWriter(path) as w:
    for i in range(4):
      w.write(tfrecord.make_sequence_example(_texture_video(i), label=i).SerializeToString())
  cfg = config_lib.default_data_config()
  cfg.source, cfg.train_paths = 'tfrecord', path
  cfg.num_frames, cfg.stride, cfg.crop_size = 4, 2, 24
  cfg.num_parallel_calls = 2
  cfg.jit_photometric = False  # no XLA compiles in a test
  cfg.augmentation.solarize_probs = (0.5, 0.5)
  cfg.augmentation.update(more)

  def batch(mode):
    c = cfg.copy_and_resolve_references()
    c.photometric = mode
    ds = pipeline.build_dataset(c, sampler={'name': 'cvrl'}, train=True, batch_size=4, seed=7,
                                process_index=0, process_count=1)
    return next(pipeline.iterate(ds))

  dev, host = batch('device'), batch('host')
  np.testing.assert_array_equal(dev['label'], host['label'])
  assert dev['video'].dtype == np.uint8 and host['video'].dtype == np.float32
  assert 'photometric' not in host and dev['photometric'].shape == (4, 2, P.SIZE)
  p = dev['photometric']
  assert len({tuple(row) for row in p.reshape(-1, P.SIZE)}) == 8  # a draw per clip
  _same_up_to_uint8_rounding(jax.jit(device.make_finish(cfg))(dev)['video'], host['video'])
  if extras == 'background':  # the query always, the key never
    assert p[:, 0, P.BG_ERASE].all() and not p[:, 1, P.BG_ERASE].any()
  if extras == 'tclr':  # the extras did fire; the drawn boxes are 0 on both paths, nothing else is
    for i in (P.GRAY_GAMMA, P.CHANNEL_DROP, P.ERASE):
      assert p[..., i].any(), i
    box = np.zeros(host['video'].shape[:-1], bool)  # [B, V, T, H, W]
    for b, v in zip(*np.nonzero(p[..., P.ERASE])):
      top, left, h, w = p[b, v, P.ERASE_BOX].astype(int)
      box[b, v, :, top:top + h, left:left + w] = True
    host_zero = (host['video'] == 0).all(-1)
    dev_zero = (np.asarray(jax.jit(device.make_finish(cfg))(dev)['video']) == 0).all(-1)
    assert box.any() and host_zero[box].all() and dev_zero[box].all()
    # outside the boxes: black where the other ops made it black, on both paths alike
    assert (host_zero != dev_zero).mean() < 1e-3, (host_zero != dev_zero).mean()
  # per frame (the ablation): the same through ClipAugmenter
  spec = A.AugmentSpec(consistent=False, solarize_probs=(0.5,), **more)
  frames = tf.constant(_texture_video(9)[:4])
  seed = tf.constant([7, 1], tf.int64)
  video, params = A.ClipAugmenter(spec, 24, photometric='device')(frames, seed, 0)
  ref, ref_params = A.ClipAugmenter(spec, 24, jit=False, photometric='host')(frames, seed, 0)
  np.testing.assert_array_equal(params.numpy(), ref_params.numpy())
  assert params.shape == (4, P.SIZE) and len({tuple(row) for row in params.numpy()}) == 4
  out = jax.jit(device.finish_batch)({'video': video.numpy()[None, None],
                                      'photometric': params.numpy()[None, None]})
  _same_up_to_uint8_rounding(out['video'][0, 0], ref.numpy())
  if extras == 'tclr':
    assert params.numpy()[:, P.ERASE].any() and len(set(params.numpy()[:, P.ERASE_BOX.start])) > 1


def _same_up_to_uint8_rounding(device_video, host_video):
  diff = np.abs(np.asarray(device_video) - host_video)
  # uint8 rounding of the resized clip (<= 0.5/255), amplified by at most the jitter factors
  assert diff.mean() < 1.5e-3, diff.mean()
  assert np.quantile(diff, 0.999) < 0.03, np.quantile(diff, 0.999)
  assert (diff > 0.05).mean() < 2e-3  # only pixels pushed across the solarize threshold


@pytest.mark.slow
def test_device_tclr_extras_match_their_definitions():
  """Gray + gamma after the jitter, channel drop (exactly 0, the rest untouched), erasing
  (exactly 0 in the box, clipped at the edge; last of all), per clip and per frame."""
  rng = np.random.default_rng(5)
  x = _smooth(rng, (1, 1, 2, 16, 16, 3))
  clip = x[0, 0]
  apply = jax.jit(device.apply_photometric)
  run = lambda **kw: np.asarray(apply(x, _neutral(**kw)[None, None]))[0, 0]
  gray = lambda y: np.repeat((y @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None], 3, -1)
  np.testing.assert_allclose(run(jitter=1, brightness=0.7, gray_gamma=1, gamma=1, gamma_exp=1.2),
                             gray(np.clip(clip * 0.7, 0, 1)) ** 1.2, atol=1e-5)
  np.testing.assert_allclose(run(gray_gamma=1, gamma=1, gamma_exp=0.75), gray(clip) ** 0.75, atol=1e-5)
  np.testing.assert_allclose(run(gray_gamma=1, gamma=0, gamma_exp=0.75), gray(clip), atol=1e-6)
  for c in range(3):
    out = run(channel_drop=1, channel=c)
    keep = [k for k in range(3) if k != c]
    assert np.all(out[..., c] == 0)
    np.testing.assert_array_equal(out[..., keep], clip[..., keep])

  def erased(y, top, left, h, w):
    y = np.array(y, copy=True)
    y[..., top:top + h, left:left + w, :] = 0
    return y
  for box in ((2, 3, 9, 11), (10, 12, 9, 7)):
    np.testing.assert_array_equal(run(erase=1, erase_box=box), erased(clip, *box))
  np.testing.assert_array_equal(run(erase=0, erase_box=(2, 3, 9, 11)), clip)
  # last of all: after contrast and blur (40 px: a 5-tap kernel), past the edge too
  big = _smooth(rng, (1, 1, 2, 40, 40, 3))
  heavy = lambda **kw: np.asarray(apply(big, _neutral(jitter=1, contrast=1.5, blur=1, sigma=1.5,
                                                      grayscale=1, solarize=1, **kw)[None, None]))[0, 0]
  kept = heavy()
  assert kept[:, 4:10, 5:12].min() > 0.02  # something to erase
  for box in ((4, 5, 6, 7), (33, 30, 9, 18)):
    np.testing.assert_array_equal(heavy(erase=1, erase_box=box), erased(kept, *box))
  # per frame: each frame its own box
  frames = np.stack([_neutral(erase=1, erase_box=(1, 2, 3, 4)), _neutral(erase=1, erase_box=(9, 0, 9, 5))])
  out = np.asarray(apply(x, frames[None, None]))[0, 0]
  np.testing.assert_array_equal(out[0], erased(clip[0], 1, 2, 3, 4))
  np.testing.assert_array_equal(out[1], erased(clip[1], 9, 0, 9, 5))
  # extras left out of the step when the config cannot draw them (the flags then unread)
  cfg = config_lib.default_data_config()
  assert device.extra_ops(cfg) == (False, False) and device.extra_ops(None) == (True, True)
  cfg.augmentation.erase_prob = 0.5
  assert device.extra_ops(cfg) == (False, True)
  cfg.augmentation.channel_drop_prob = 0.1
  assert device.extra_ops(cfg) == (True, True)
  batch = {'video': (x * 255).astype(np.uint8), 'photometric': frames[None, None]}
  np.testing.assert_array_equal(np.asarray(device.finish_batch(batch, cfg)['video'])[0, 0, 1],
                                erased(batch['video'][0, 0, 1].astype(np.float32) * np.float32(1 / 255), 9, 0, 9, 5))


def test_background_erase_matches_its_definition():
  """Wang et al. 2021: every frame x_t -> (1 - w) x_t + w x_k, k = floor(position * T) (the
  last frame at most), last of all; unchanged where the flag is off; per frame: the draw of
  the clip's first frame; the host op the same; left out where the config cannot draw it."""
  rng = np.random.default_rng(3)
  x = _smooth(rng, (3, 1, 5, 12, 12, 3))
  cases = [(0.25, 0.0), (0.1, 0.5), (0.3, 0.99), (0.2, 1.0)]  # (weight, position): k 0, 2, 4, 4
  apply = jax.jit(device.apply_photometric)
  for w, pos in cases:
    params = np.stack([_neutral(bg_erase=1, bg_weight=w, bg_frame=pos),
                       _neutral(bg_erase=0, bg_weight=w, bg_frame=pos),
                       _neutral(bg_erase=1, bg_weight=w, bg_frame=pos, erase=1, erase_box=(2, 3, 4, 5))])
    out = np.asarray(apply(x, params[:, None]))[:, 0]
    k = min(int(np.floor(pos * 5)), 4)
    np.testing.assert_allclose(out[0], (1 - w) * x[0, 0] + w * x[0, 0, k], atol=1e-6)
    np.testing.assert_array_equal(out[1], x[1, 0])
    erased = np.array(x[2, 0], copy=True)
    erased[:, 2:6, 3:8] = 0
    np.testing.assert_allclose(out[2], (1 - w) * erased + w * erased[k], atol=1e-6)
    host = A.background_erase(tf.constant(x[0, 0]), tf.constant(params[0])).numpy()
    np.testing.assert_allclose(host, out[0], atol=1e-6)
  frames = np.stack([_neutral(bg_erase=1, bg_weight=0.3, bg_frame=0.7)] +
                    [_neutral(bg_erase=0, bg_frame=0.0)] * 4)  # [T, P]: frame 0's draw rules
  out = np.asarray(apply(x[:1], frames[None, None]))[0, 0]
  np.testing.assert_allclose(out, 0.7 * x[0, 0] + 0.3 * x[0, 0, 3], atol=1e-6)
  cfg = config_lib.default_data_config()
  assert not device.background_erasing(cfg) and device.background_erasing(None)
  batch = {'video': (x * 255).astype(np.uint8), 'photometric': params[:, None]}
  np.testing.assert_array_equal(np.asarray(device.finish_batch(batch, cfg)['video'])[0],
                                batch['video'][0].astype(np.float32) * np.float32(1 / 255))
  cfg.augmentation.background_erase_probs = (1.0, 0.0)
  assert device.background_erasing(cfg)
  assert not device.background_erasing(config_lib.set_probe_augmentation(cfg))
