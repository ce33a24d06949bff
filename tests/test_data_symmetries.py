"""Per-clip symmetries (augmentation.symmetries) and the encoder's per-clip input maps
(model.input='dif_std', 'rgb_std', 'rgb_pc', 'res_pc', ...)."""
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from cvrl.data import augmentation as A
from cvrl.models import r3d

NO_COLOUR = dict(color_jitter_prob=0.0, grayscale_prob=0.0, blur_probs=(0.0,),
                 solarize_probs=(0.0,), flip_prob=0.0)
FIELDS = ('vflip_prob', 'transpose_prob', 'reverse_prob', 'invert_prob', 'channel_invert_prob')


def _frames(t=4, h=14, w=18):
  """uint8 [t, h, w, 3]: a different random picture every frame."""
  return tf.constant(np.random.default_rng(7).integers(0, 256, (t, h, w, 3), np.uint8))


def _clip(seed, **probs):
  spec = A.AugmentSpec(**NO_COLOUR, **probs)
  return A.ClipAugmenter(spec, 8, photometric='device')(_frames(), seed, 0)[0].numpy()


EXACT = {'vflip_prob': lambda x: x[:, ::-1], 'transpose_prob': lambda x: x.swapaxes(1, 2),
         'reverse_prob': lambda x: x[::-1], 'invert_prob': lambda x: 255 - x,
         'channel_invert_prob': lambda x: 255 - x}


@pytest.mark.parametrize('field', FIELDS)
def test_each_symmetry_is_its_exact_op_on_the_same_crop(field):
  """With probability 1 the clip is the plain clip of the same seed (same crop) under the
  op, exactly: upside down, transposed, its frames in reverse order, 255 - x."""
  seed = tf.constant([5, 6], tf.int64)
  plain = _clip(seed)
  assert len({plain[t].tobytes() for t in range(len(plain))}) == len(plain)
  np.testing.assert_array_equal(_clip(seed, **{field: 1.0}), EXACT[field](plain))


def _fired(seed, field):
  """Whether `field` at probability 0.5 fired on the clip of `seed` (channel_invert_prob:
  on each channel)."""
  out, plain = _clip(seed, **{field: 0.5}), _clip(seed)
  if field == 'channel_invert_prob':
    return [not np.array_equal(out[..., c], plain[..., c]) for c in range(3)]
  return not np.array_equal(out, plain)


def test_one_draw_per_clip_independent_across_clips_fields_and_fixed_by_the_seed():
  """At probability 0.5 each field (each channel's flag) fires on about half the clips, on
  the two views of one example independently (each view its own seed), apart from the
  other fields and channels (each its own draw), and a seed gives the same clip every
  time."""
  seeds = [A.fold_seed(tf.constant([i, 3], tf.int64), 2, v) for i in range(24) for v in (0, 1)]
  fired = {f: np.array([_fired(s, f) for s in seeds]).reshape(24, 2, -1) for f in FIELDS}
  channels = fired.pop('channel_invert_prob')
  fired = {f: flags[..., 0] for f, flags in fired.items()}
  fired.update({f'channel {c}': channels[..., c] for c in range(3)})
  for field, flags in fired.items():
    assert 0.25 < flags.mean() < 0.75, field
    assert 0.2 < (flags[:, 0] != flags[:, 1]).mean() < 0.8, field
  for field in FIELDS:
    np.testing.assert_array_equal(_clip(seeds[0], **{field: 0.5}), _clip(seeds[0], **{field: 0.5}))
  names = list(fired)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert 0.2 < (fired[a] != fired[b]).mean() < 0.8, (a, b)


def test_the_other_draws_keep_their_values():
  """The symmetries' draws are appended: a clip's crop, flip and photometric parameters
  are the same with them on or off."""
  frames, seed = _frames(), tf.constant([1, 2], tf.int64)
  base = A.AugmentSpec(color_jitter_prob=1.0, flip_prob=0.5)
  on = A.AugmentSpec(color_jitter_prob=1.0, flip_prob=0.5, reverse_prob=1.0)
  x0, p0 = A.ClipAugmenter(base, 24, photometric='device')(frames, seed, 1)
  x1, p1 = A.ClipAugmenter(on, 24, photometric='device')(frames, seed, 1)
  np.testing.assert_array_equal(p0.numpy(), p1.numpy())
  np.testing.assert_array_equal(x0.numpy()[::-1], x1.numpy())


def _np_standardized(x):
  """Each channel of each clip [N, T, H, W, C] less its mean over its std (+ DIF_EPS)."""
  flat = x.reshape(len(x), -1, x.shape[-1])
  return (x - flat.mean(1)[:, None, None, None]) / (flat.std(1)[:, None, None, None] + r3d.DIF_EPS)


def test_standardized_input_is_each_clip_less_its_mean_over_its_std():
  """'rgb_std' (and 'dif_std', 'res_std' on their maps): each channel of each clip less
  its mean, over its std (+ DIF_EPS); a clip and the same clip at another contrast and
  level of each channel give the same input up to the epsilon."""
  x = np.random.default_rng(0).random((2, 5, 6, 6, 3)).astype(np.float32)
  x[1] *= 0.3
  x[..., 2] = 0.5 * x[..., 2] + 0.2
  got = np.asarray(r3d.standardized(jnp.asarray(x)))
  np.testing.assert_allclose(got, _np_standardized(x), rtol=1e-5, atol=1e-5)
  again = np.asarray(r3d.standardized(jnp.asarray(x * [0.5, 0.7, 0.6] + [0.4, 0.1, 0.3])))
  np.testing.assert_allclose(again, got, rtol=0.05, atol=0.02)


def test_pan_moves_the_crop_box_in_a_straight_line_inside_the_frame():
  """With the pan the box keeps its size, starts where it was drawn, ends where u[_PAN_END]
  puts it (floor(u * (room + 1))), moves linearly between (rounded), stays inside the frame;
  without it (flag over the probability) every frame has the drawn box."""
  window, shape = tf.constant([3, 4, 30, 20]), tf.constant([48, 40, 3])
  u = np.zeros(A.NUM_DRAWS, np.float32)
  u[A._PAN_END] = [0.99, 0.5]  # pylint: disable=protected-access
  boxes = A.pan_windows(window, tf.constant(u), 0.5, shape, 6).numpy()
  end = np.array([18, 10])  # room (18, 20): floor(0.99 * 19), floor(0.5 * 21)
  want = np.round(np.array([3, 4]) + np.arange(6)[:, None] / 5 * (end - [3, 4]))
  np.testing.assert_array_equal(boxes[:, :2], want)
  np.testing.assert_array_equal(boxes[:, 2:], np.tile([30, 20], (6, 1)))
  u[A._PAN] = 0.7  # pylint: disable=protected-access
  still = A.pan_windows(window, tf.constant(u), 0.5, shape, 6).numpy()
  np.testing.assert_array_equal(still, np.tile([3, 4, 30, 20], (6, 1)))


def test_a_panned_clip_is_each_frame_cropped_at_its_own_box():
  """Frame t of the clip is frame t's crop at box t, resized: as crop_resize_frames of
  that frame alone; the boxes are the pan of the clip's own crop window."""
  frames, seed = _frames(t=5, h=30, w=36), tf.constant([2, 9], tf.int64)
  spec = A.AugmentSpec(**NO_COLOUR, area_range=(0.2, 0.4), pan_prob=1.0)
  clip = A.ClipAugmenter(spec, 8, photometric='device')(frames, seed, 0)[0].numpy()
  u = tf.random.stateless_uniform([A.NUM_DRAWS], seed)
  window = A.crop_window(A.fold_seed(seed, 1), A.frame_shape(frames), spec)
  boxes = A.pan_windows(window, u, 1.0, A.frame_shape(frames), 5)
  assert len({tuple(b) for b in boxes.numpy()}) > 1
  for t in range(5):
    np.testing.assert_array_equal(
        clip[t], A.crop_resize_frames(frames[t:t + 1], boxes[t], 8).numpy()[0])


def _np_principal_colour(x):
  """numpy: each clip's pixels onto its covariance's top eigenvector, over the std
  (+ DIF_EPS), sign making the third moment >= 0, in 3 channels."""
  out = []
  for clip in x:
    flat = clip.reshape(-1, 3) - clip.reshape(-1, 3).mean(0)
    _, vectors = np.linalg.eigh(flat.T @ flat / len(flat))
    y = flat @ vectors[:, -1]
    y = y / (y.std() + r3d.DIF_EPS)
    y = -y if np.mean(y ** 3) < 0 else y
    out.append(np.repeat(y.reshape(clip.shape[:-1])[..., None], 3, -1))
  return np.stack(out)


def _two_colour_clip(mask, background, colour, noise_seed):
  noise = np.random.default_rng(noise_seed).normal(0, 0.01, mask.shape[:-1] + (3,))
  return ((1 - mask) * background + mask * colour + noise).astype(np.float32)


def test_principal_colour_is_the_top_colour_axis_projection_with_its_sign_set():
  """'rgb_pc': numpy's eigh of each clip's colour covariance, the projection standardised
  and its sign set by the third moment; a clip and its negative give the same input."""
  rng = np.random.default_rng(3)
  x = rng.random((2, 4, 6, 6, 3)).astype(np.float32) * [1.0, 0.5, 0.2]
  x[1] = x[1] ** 3  # a skewed clip: its sign is decided by the data, not by eigh
  got = np.asarray(r3d.principal_colour(jnp.asarray(x)))
  np.testing.assert_allclose(got, _np_principal_colour(x), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(r3d.principal_colour(jnp.asarray(1 - x))), got,
                             rtol=1e-4, atol=1e-4)


def test_principal_colour_gives_one_input_for_any_two_colours():
  """An object over a background: whatever the two colours (and their luminance, equal
  here), the input is the object's mask, positive where the (rarer) object is. Grayscale
  then standardising ('rgb_std') loses the object when the luminances match."""
  mask = (np.random.default_rng(0).random((1, 4, 12, 12, 1)) < 0.2).astype(np.float32)
  pairs = [([0.2, 0.5, 0.3], [0.9, 0.1, 0.4]), ([0.7, 0.7, 0.1], [0.2, 0.3, 0.9]),
           ([0.5, 0.5, 0.5], [0.8, 0.4, 0.2298])]
  inputs = [np.asarray(r3d.principal_colour(jnp.asarray(_two_colour_clip(
      mask, np.array(b), np.array(c), i)))) for i, (b, c) in enumerate(pairs)]
  for got in inputs:
    assert np.corrcoef(got[..., 0].ravel(), mask.ravel())[0, 1] > 0.99
    assert np.abs(got - inputs[0]).mean() < 0.1  # the noise differs, and its share
  grey = _two_colour_clip(mask, np.array(pairs[2][0]), np.array(pairs[2][1]), 5)
  luminance = grey @ np.array([0.2989, 0.587, 0.114], np.float32)
  assert abs(np.corrcoef(luminance.ravel(), mask.ravel())[0, 1]) < 0.5


def _np_still_removed(x):
  return x - x.mean(1, keepdims=True)


def _np_median_removed(x):
  return x - np.median(x, 1, keepdims=True)


# One mode per time map ('rgb', 'dif', 'res', 'med') and per channel map ('std', 'pc'): the
# encoder composes the two, each map is checked on its own above.
_NP_INPUTS = {"dif_std": (1, lambda x: _np_standardized(x[:, 1:] - x[:, :-1])),
              "rgb_pc": (0, _np_principal_colour),
              "res_pc": (0, lambda x: _np_principal_colour(_np_still_removed(x))),
              "med_pc": (0, lambda x: _np_principal_colour(_np_median_removed(x)))}


def test_per_clip_input_encoders_are_the_rgb_network_on_numpy_mapped_inputs():
  """inputs 'rgb_pc', 'res_pc' on T frames and 'dif_std' on T + 1 == the same parameters
  in 'rgb' mode on the clips (their differences, or less their mean frame) mapped in
  numpy; only the difference inputs take the extra frame."""
  from flax import nnx
  from _downstream_toys import numpy_filled
  from cvrl.config_lib import default_model_config
  from cvrl.models import build_encoder, extra_frames
  cfg = default_model_config()
  cfg.update(depth=18, width=0.125, preset="r3d18", input="rgb")
  rgb = numpy_filled(lambda: build_encoder(cfg, nnx.Rngs(0)))
  rgb.eval()
  frames = np.random.default_rng(0).integers(0, 256, (2, 5, 16, 16, 3)).astype(np.uint8)
  frames[1] = frames[1] // 4 + [0, 40, 120]  # a second clip of other levels and contrast
  x = frames.astype(np.float32) / 255.0
  got, want = {}, {}
  for mode, (extra, np_map) in _NP_INPUTS.items():
    cfg.input = mode
    assert extra_frames(cfg) == extra
    model = nnx.eval_shape(lambda: build_encoder(cfg, nnx.Rngs(1)))
    nnx.update(model, nnx.state(rgb))  # no parameter of its own
    model.eval()
    clips = frames if extra else frames[:, 1:]
    got[mode], want[mode] = nnx.jit(lambda m, r, c, i: (m(c), r(i)))(
        model, rgb, clips, np_map(x if extra else x[:, 1:]))
    np.testing.assert_allclose(got[mode], want[mode], rtol=1e-3, atol=1e-4, err_msg=mode)
  assert not np.allclose(want["rgb_pc"], want["dif_std"], atol=1e-3)
  assert not np.allclose(want["rgb_pc"], want["res_pc"], atol=1e-3)
  assert not np.allclose(want["res_pc"], want["med_pc"], atol=1e-3)


def test_median_removed_is_what_moves_less_the_scene_behind_it_with_no_trail():
  """'med': an object over each pixel for under half the frames leaves the pixel's median
  the scene's, so the map is 0 off the object and object - scene on it; the mean frame
  ('res') leaves a trail where the object was."""
  from cvrl.models import r3d
  scene = np.random.default_rng(0).uniform(0, 0.8, (1, 1, 6, 14, 3)).astype(np.float32)
  cover = np.zeros((1, 5, 6, 14, 1), np.float32)
  for t in range(5):
    cover[0, t, 2:4, 3 * t:3 * t + 2] = 1.0  # a 2 x 2 square, 3 pixels a frame
  x = (1 - cover) * scene + cover * 1.0
  np.testing.assert_allclose(np.asarray(r3d.median_removed(x)), cover * (1.0 - scene), atol=1e-6)
  trail = np.asarray(r3d.still_removed(x)) * (1 - cover)
  assert np.abs(trail).max() > 0.1


def test_the_temporal_median_is_numpys_for_every_clip_length_ties_included():
  """median_network's min/max on T frames == np.median over T for T = 1..33 (odd and even,
  powers of two and not), random values and heavy ties; it keeps fewer compare-exchanges
  than the full sort (T = 8: Batcher's 19)."""
  from cvrl.core import ops
  rng = np.random.default_rng(0)
  for t in range(1, 34):
    x = rng.random((3, t, 2, 3, 2)).astype(np.float32)
    x[0] = np.round(x[0] * 2)  # three levels: many ties
    x[1] = x[1, ::-1]  # and another order
    np.testing.assert_allclose(np.asarray(ops.temporal_median(x)),
                               np.median(x, 1, keepdims=True), atol=1e-6, err_msg=str(t))
  assert len(ops.median_network(8)) < 19 and ops.median_network(1) == []
