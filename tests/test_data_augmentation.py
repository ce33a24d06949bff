"""Clip augmentation: one draw per clip, crop window, colour ops, blur, eval crops."""
import numpy as np
import pytest
import tensorflow as tf

from cvrl.data import augmentation as A
from cvrl.data import photometric as P


def _texture(seed, h=48, w=64):
  rng = np.random.default_rng(seed)
  coarse = rng.random((7, 9, 3)).astype(np.float32)
  img = tf.image.resize(coarse[None], [h, w], 'bicubic')[0].numpy()
  img = img + 0.15 * rng.random((h, w, 3))
  return np.clip(img / img.max() * 255, 0, 255).astype(np.uint8)


def _jpegs(frames):
  return tf.stack([tf.io.encode_jpeg(f, quality=95) for f in frames])


SEED = tf.constant([3, 4], tf.int64)
NO_COLOUR = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_probs=(0.0,), solarize_probs=(0.0,))


def test_identical_frames_stay_identical_only_with_consistent_draws():
  clip = _jpegs([_texture(0)] * 4)
  spec = A.AugmentSpec(blur_probs=(1.0,), solarize_probs=(1.0,), color_jitter_prob=1.0)
  aug = A.ClipAugmenter(spec, 32, jit=True, photometric='host')
  out, params = aug(clip, SEED, 0)
  out = out.numpy()
  assert out.shape == (4, 32, 32, 3) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
  assert params.shape == (P.SIZE,)
  for t in range(1, 4):
    np.testing.assert_array_equal(out[t], out[0])
  np.testing.assert_array_equal(aug(clip, SEED, 0)[0].numpy(), out)  # same seed, same clip
  other_view = aug(clip, A.fold_seed(SEED, 1), 1)[0].numpy()
  assert np.abs(other_view - out).mean() > 0.02
  per_frame = A.ClipAugmenter(A.AugmentSpec(consistent=False, color_jitter_prob=1.0), 32, jit=False,
                              photometric='host')
  pf, pf_params = per_frame(clip, SEED, 0)
  pf = pf.numpy()
  assert pf.shape == out.shape and pf_params.shape == (4, P.SIZE)
  diffs = [np.abs(pf[t] - pf[0]).mean() for t in range(1, 4)]
  assert min(diffs) > 0.01, diffs


def test_device_mode_ships_uint8_spatial_part_and_the_same_parameters():
  clip = _jpegs([_texture(s) for s in range(3)])
  spec = A.AugmentSpec(color_jitter_prob=1.0, solarize_probs=(0.5,))
  host = A.ClipAugmenter(spec, 24, jit=False, photometric='host')
  device = A.ClipAugmenter(spec, 24, photometric='device')
  video, params = device(clip, SEED, 1)
  assert video.dtype == tf.uint8 and video.shape == (3, 24, 24, 3)
  np.testing.assert_array_equal(params.numpy(), host(clip, SEED, 1)[1].numpy())
  # the uint8 clip is the host path's resized clip rounded: same crop, flip and resize
  bare = A.ClipAugmenter(A.AugmentSpec(**NO_COLOUR), 24, jit=False, photometric='host')
  ref = bare(clip, SEED, 1)[0].numpy() * 255
  assert np.abs(video.numpy().astype(np.float32) - ref).max() <= 0.5 + 1e-3
  pf = A.ClipAugmenter(A.AugmentSpec(consistent=False), 24, photometric='device')
  video, params = pf(clip, SEED, 0)
  assert video.dtype == tf.uint8 and params.shape == (3, P.SIZE)
  assert len({tuple(p) for p in params.numpy()}) == 3  # one draw per frame
  with pytest.raises(ValueError, match='photometric'):
    A.ClipAugmenter(spec, 24, photometric='gpu')


def test_crop_window_decode_matches_full_decode_then_crop():
  frames = [_texture(s) for s in range(3)]
  clip = _jpegs(frames)
  spec = A.AugmentSpec(flip_prob=0.0, **NO_COLOUR)
  out = A.ClipAugmenter(spec, 24, jit=False, photometric='host')(clip, SEED, 0)[0].numpy()
  y, x, h, w = A.crop_window(A.fold_seed(SEED, 1), tf.constant([48, 64, 3]), spec).numpy()
  area = h * w / (48 * 64)
  assert 0.3 - 1e-6 <= area <= 1.0 and 0.5 - 0.05 <= w / h <= 2.0 + 0.05
  full = tf.stack([tf.io.decode_jpeg(j, channels=3) for j in clip])
  ref = tf.image.resize(full[:, y:y + h, x:x + w], [24, 24]).numpy() / 255.0
  assert np.abs(out - ref).max() < 3 / 255  # decode_and_crop vs decode + crop
  flipped = A.ClipAugmenter(A.AugmentSpec(flip_prob=1.0, **NO_COLOUR), 24, jit=False,
                            photometric='host')(clip, SEED, 0)[0]
  np.testing.assert_allclose(flipped.numpy(), out[:, :, ::-1], atol=1e-5)


def test_crop_area_and_flip_frequencies_over_draws():
  spec = A.AugmentSpec()
  areas, ratios = [], []
  for i in range(200):
    _, _, h, w = A.crop_window(tf.constant([i, 9], tf.int64), tf.constant([256, 340, 3]), spec).numpy()
    areas.append(h * w / (256 * 340))
    ratios.append(w / h)
  assert min(areas) >= 0.29 and max(areas) <= 1.0 and np.std(areas) > 0.1
  assert min(ratios) >= 0.45 and max(ratios) <= 2.1


def _params(**values):
  """A parameter vector with every op off and neutral factors, then `values`."""
  p = np.zeros(P.SIZE, np.float32)
  p[P.BRIGHTNESS] = p[P.CONTRAST] = p[P.SATURATION] = 1.0
  p[P.ORDER] = [0, 1, 2, 3]
  p[P.SIGMA] = 1.0
  for k, v in values.items():
    p[getattr(P, k.upper())] = v
  return p


@pytest.mark.parametrize('jit', [True, False])
def test_colour_ops_match_definitions(jit):
  rng = np.random.default_rng(0)
  x = rng.random((2, 16, 16, 3)).astype(np.float32)
  spec = A.AugmentSpec(saturation=0.0, hue=0.0)
  ph = A.Photometric(spec, 0, jit=jit)  # kernel 0: no blur
  # brightness then contrast (fixed order), factors from the parameters
  b, c = 0.6, 1.4
  out = ph(tf.constant(x * 255), tf.constant(_params(jitter=1, brightness=b, contrast=c))).numpy()
  y = np.clip(x * b, 0, 1)
  m = y.mean(axis=(0, 1, 2), keepdims=True)  # mean of the whole clip per channel
  y = np.clip((y - m) * c + m, 0, 1)
  np.testing.assert_allclose(out, y, atol=1e-5)
  # saturation and hue: same as TF's own kernels
  spec = A.AugmentSpec(brightness=0.0, contrast=0.0)
  ph = A.Photometric(spec, 0, jit=jit)
  s, h = 1.64, -0.16
  out = ph(tf.constant(x * 255), tf.constant(_params(jitter=1, saturation=s, hue=h))).numpy()
  ref = tf.clip_by_value(tf.image.adjust_hue(tf.clip_by_value(tf.image.adjust_saturation(x, s), 0, 1), h), 0, 1)
  np.testing.assert_allclose(out, ref.numpy(), atol=1e-4)
  # the jitter flag off: nothing changes
  off = ph(tf.constant(x * 255), tf.constant(_params(jitter=0, saturation=s, hue=h))).numpy()
  np.testing.assert_allclose(off, x, atol=1e-6)
  # grayscale and solarization
  ph = A.Photometric(A.AugmentSpec(), 0, jit=jit)
  out = ph(tf.constant(x * 255), tf.constant(_params(grayscale=1, solarize=1))).numpy()
  g = x @ np.array([0.2989, 0.587, 0.114], np.float32)
  g = np.repeat(g[..., None], 3, -1)
  np.testing.assert_allclose(out, np.where(g < 0.5, g, 1 - g), atol=1e-4)


def test_random_order_follows_the_parameters():
  x = np.random.default_rng(1).random((1, 8, 8, 3)).astype(np.float32)
  spec = A.AugmentSpec(saturation=0.0, hue=0.0)
  ph = A.Photometric(spec, 0, jit=False)
  b, c = 1.64, 0.36
  def bright(y): return np.clip(y * b, 0, 1)
  def contrast(y):
    m = y.mean(axis=(0, 1, 2), keepdims=True)
    return np.clip((y - m) * c + m, 0, 1)
  p = _params(jitter=1, brightness=b, contrast=c)
  p[P.ORDER] = [1, 0, 2, 3]  # contrast first, then brightness
  out = ph(tf.constant(x * 255), tf.constant(p)).numpy()
  np.testing.assert_allclose(out, bright(contrast(x)), atol=1e-5)
  assert np.abs(bright(contrast(x)) - contrast(bright(x))).max() > 1e-2


def _reference_blur(x, sigma, kernel_size):
  radius = kernel_size // 2
  k = 2 * radius + 1
  r = np.arange(-radius, radius + 1)
  w = np.exp(-r ** 2 / (2 * sigma ** 2))
  w = (w / w.sum()).astype(np.float32)
  kh = np.tile(w.reshape(1, k, 1, 1), [1, 1, 3, 1])
  kv = np.tile(w.reshape(k, 1, 1, 1), [1, 1, 3, 1])
  y = tf.nn.depthwise_conv2d(x, kh, [1, 1, 1, 1], 'SAME')
  return tf.nn.depthwise_conv2d(y, kv, [1, 1, 1, 1], 'SAME').numpy()


@pytest.mark.parametrize('sigma', [0.3, 1.1, 2.0])
def test_blur_matches_reference_depthwise_convolution(sigma):
  x = np.random.default_rng(2).random((2, 40, 40, 3)).astype(np.float32)
  ref = _reference_blur(x, sigma, 22)  # 23 taps, as at 224 px
  exact = A.gaussian_blur(tf.constant(x), tf.constant(sigma), 22, truncate_sigmas=0.0).numpy()
  np.testing.assert_allclose(exact, ref, atol=1e-6)
  for jit in (True, False):
    spec = A.AugmentSpec(blur_truncate_sigmas=4.0)
    ph = A.Photometric(spec, 22, jit=jit)
    out = ph(tf.constant(x * 255), tf.constant(_params(blur=1, sigma=sigma))).numpy()
    np.testing.assert_allclose(out, np.clip(ref, 0, 1), atol=1e-4)


def test_eval_views_resize_and_three_crops():
  frames = np.stack([_texture(s, 40, 60) for s in range(2)])
  out = A.eval_views(tf.constant(frames), resize=32, crop=32, num_crops=3).numpy()
  assert out.shape == (3, 2, 32, 32, 3)
  resized = tf.image.resize(frames, [32, 48]).numpy() / 255.0  # shorter side 40 -> 32
  for i, x0 in enumerate([0, 8, 16]):  # start, centre, end of the long side
    np.testing.assert_allclose(out[i], resized[:, :, x0:x0 + 32], atol=1e-5)
  centre = A.eval_views(tf.constant(frames), resize=40, crop=32, num_crops=1).numpy()
  np.testing.assert_allclose(centre[0], frames[:, 4:36, 14:46] / 255.0, atol=1e-6)
  as_uint8 = A.eval_views(tf.constant(frames), resize=32, crop=32, num_crops=3, dtype=tf.uint8).numpy()
  assert as_uint8.dtype == np.uint8  # the device path: rounded, scaled on the accelerator
  assert np.abs(as_uint8 / 255.0 - A.eval_views(tf.constant(frames), 32, 32, 3).numpy()).max() <= 0.5 / 255 + 1e-6
  portrait = np.transpose(frames, (0, 2, 1, 3))
  out = A.eval_views(tf.constant(portrait), resize=40, crop=40, num_crops=3).numpy()
  np.testing.assert_allclose(out[2], portrait[:, 20:60] / 255.0, atol=1e-6)


def test_spec_from_config_and_view_probabilities():
  from cvrl.data import config
  cfg = config.default_data_config()
  spec = A.AugmentSpec.from_config(cfg.augmentation)
  assert A.view_probabilities(spec, 3) == [(1.0, 0.0), (0.1, 0.2), (0.1, 0.2)]
  config.set_rho_augmentation(cfg)
  rho = A.AugmentSpec.from_config(cfg.augmentation)
  assert rho.area_range == (0.2, 0.766) and rho.hue == 0.15
  assert A.view_probabilities(rho, 4) == [(0.5, 0.0)] * 4
  config.set_probe_augmentation(cfg)
  probe = A.AugmentSpec.from_config(cfg.augmentation)
  assert probe.color_jitter_prob == 0 and probe.grayscale_prob == 0
  assert A.view_probabilities(probe, 1) == [(0.0, 0.0)]


def test_scalar_seed_depends_on_every_value_folded_in():
  seeds = [A.scalar_seed(A.fold_seed([3, 0], 2, epoch)).numpy() for epoch in range(4)]
  assert len(set(seeds)) == 4 and all(0 <= s < 2 ** 31 - 1 for s in seeds)
  # what it guards against: the first entry of a fold ignores the last value folded in
  assert len({A.fold_seed([3, 0], 2, epoch).numpy()[0] for epoch in range(4)}) == 1


@pytest.mark.slow
@pytest.mark.parametrize("b,c,s,h", [(0.6, 0.6, 0.6, 0.15), (0.25, 0.4, 0.1, 0.05)])
def test_every_colour_jitter_range_has_its_full_spread(b, c, s, h):
  """brightness U[max(0, 1-b), 1+b], contrast U[1-c, 1+c], saturation U[1-s, 1+s], hue
  U[-h, h]: each factor's draws fill its whole range, uniformly (a range of 1 +- c/2, or
  one factor drawn from another's range, fails)."""
  spec = A.AugmentSpec(brightness=b, contrast=c, saturation=s, hue=h)
  u = np.random.default_rng(0).random((4000, A.NUM_DRAWS)).astype(np.float32)
  params = np.stack([A.draw_photometric(tf.constant(x), spec, 0, 0).numpy() for x in u[:2000]])
  for index, lo, hi in [(P.BRIGHTNESS, max(0.0, 1 - b), 1 + b), (P.CONTRAST, 1 - c, 1 + c),
                        (P.SATURATION, 1 - s, 1 + s), (P.HUE, -h, h)]:
    v = params[:, index]
    width = hi - lo
    assert lo - 1e-6 <= v.min() < lo + 0.01 * width, index
    assert hi - 0.01 * width < v.max() <= hi + 1e-6, index
    np.testing.assert_allclose(np.std(v), width / np.sqrt(12), rtol=0.06)
    np.testing.assert_allclose(np.mean(v), (lo + hi) / 2, atol=0.03 * width)


def test_crop_and_flip_are_the_same_for_every_frame_on_pixels():
  """Frame t = frame 0 + 10 t (no clipping): one crop window and one flip for the clip
  keep every output frame equal to frame 0's output + 10 t / 255, pixel for pixel
  (bilinear resizing is linear); a per-frame draw (the ablation) does not."""
  base = np.minimum(_texture(5), 200).astype(np.uint8)
  frames = tf.constant(np.stack([base + np.uint8(10 * t) for t in range(4)]))
  flips = set()
  for s in range(6):
    seed = tf.constant([s, 11], tf.int64)
    spec = A.AugmentSpec(area_range=(0.2, 0.6), flip_prob=0.5, **NO_COLOUR)
    out = A.ClipAugmenter(spec, 24, jit=False, photometric='host')(frames, seed, 0)[0].numpy()
    for t in range(1, 4):
      np.testing.assert_allclose(out[t] - out[0], 10 * t / 255, atol=1e-5)
    # which way frame 0 went: its crop, unflipped or flipped, from the full-res frame
    window = A.crop_window(A.fold_seed(seed, 1), A.frame_shape(frames), spec).numpy()
    crop = base[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]
    plain = tf.image.resize(crop, [24, 24], 'bilinear').numpy() / 255
    mirrored = tf.image.resize(crop[:, ::-1], [24, 24], 'bilinear').numpy() / 255
    errs = (np.abs(out[0] - plain).max(), np.abs(out[0] - mirrored).max())
    assert min(errs) < 1e-5, errs
    flips.add(int(np.argmin(errs)))
  assert flips == {0, 1}  # both ways drawn: the flip is checked on pixels too
  per_frame = A.ClipAugmenter(A.AugmentSpec(consistent=False, area_range=(0.2, 0.6), **NO_COLOUR),
                              24, jit=False, photometric='host')(frames, SEED, 0)[0].numpy()
  assert np.abs(per_frame[1] - per_frame[0] - 10 / 255).max() > 0.05


def _np_gray(x):
  return np.repeat((x @ np.array([0.2989, 0.587, 0.114], np.float32))[..., None], 3, -1)


def _np_erase(x, top, left, h, w):
  """The reference's torchvision erase: the slice (clipped at the edge) set to 0."""
  y = np.array(x, copy=True)
  y[..., top:top + h, left:left + w, :] = 0
  return y


@pytest.mark.parametrize('jit', [True, False])
def test_tclr_extras_match_the_reference_formulas(jit):
  """TCLR's gray + gamma (after the jitter), channel drop and erasing on fixed parameters,
  against numpy: x ** gamma of the grayscale, the dropped channel exactly 0 and the others
  untouched, the erased rectangle exactly 0 (also one running past the edge), the rest
  untouched, erasing after every other op (blur, contrast, grayscale, solarize)."""
  x = np.random.default_rng(3).random((2, 16, 16, 3)).astype(np.float32)
  spec = A.AugmentSpec(saturation=0.0, hue=0.0, gray_gamma_prob=0.5, channel_drop_prob=0.5,
                       erase_prob=0.5, blur_probs=(0.5,), solarize_probs=(0.5,))
  ph = A.Photometric(spec, 0, jit=jit)  # kernel 0: no blur
  run = lambda **kw: ph(tf.constant(x * 255), tf.constant(_params(**kw))).numpy()
  base = run()  # nothing on: x (scaled by 1/255)
  np.testing.assert_allclose(base, x, atol=1e-6)
  # grayscale then gamma, after the (brightness) jitter
  b = 0.7
  for gamma in (0.75, 1.2):
    out = run(jitter=1, brightness=b, gray_gamma=1, gamma=1, gamma_exp=gamma)
    np.testing.assert_allclose(out, _np_gray(np.clip(x * b, 0, 1)) ** gamma, atol=1e-5)
  np.testing.assert_allclose(run(gray_gamma=1, gamma=0, gamma_exp=0.8), _np_gray(x), atol=1e-6)
  assert np.abs(_np_gray(x) ** 0.8 - _np_gray(x)).max() > 0.05
  # one channel to zero, the others exactly as they were
  for c in range(3):
    out = run(channel_drop=1, channel=c)
    assert np.all(out[..., c] == 0)
    keep = [k for k in range(3) if k != c]
    np.testing.assert_array_equal(out[..., keep], base[..., keep])
  # erasing: inside the frame, and past its bottom-right edge (clipped)
  for box in ((2, 3, 9, 11), (10, 12, 9, 7), (0, 0, 18, 18)):
    out = run(erase=1, erase_box=box)
    np.testing.assert_array_equal(out, _np_erase(base, *box))
  assert (run(erase=1, erase_box=(10, 12, 9, 7)) == 0).all(-1).sum() == 2 * 6 * 4
  np.testing.assert_array_equal(run(erase=0, erase_box=(2, 3, 9, 11)), base)  # flag off
  # erasing comes last: after blur, contrast around the mean, grayscale and solarization
  blurred = A.Photometric(spec, 4, jit=jit)  # radius 2
  everything = dict(jitter=1, contrast=1.5, blur=1, sigma=1.5, grayscale=1, solarize=1,
                    channel_drop=1, channel=1)
  full = lambda **kw: blurred(tf.constant(x * 255), tf.constant(_params(**everything, **kw))).numpy()
  kept = full()
  assert kept[:, 4:10, 5:12].min() > 0.02  # something to erase
  np.testing.assert_array_equal(full(erase=1, erase_box=(4, 5, 6, 7)), _np_erase(kept, 4, 5, 6, 7))
