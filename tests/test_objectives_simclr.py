import jax
import numpy as np
import pytest

import cvrl  # noqa: F401  (rbg PRNG)
from cvrl.objectives.simclr import multi_positive_nt_xent
from objective_checks import (l2n, logsumexp, numeric_grad, random_embeddings,
                              sharded_equals_single)

T = 0.1


def numpy_simclr(z, temperature, positives_in_denominator):
  """For each anchor a and positive p (another clip of a's video): CE with target p over
  all clips but a (or over p and the other videos' clips); mean over (a, p)."""
  b, v, d = z.shape
  flat = l2n(z.reshape(b * v, d))
  s = flat @ flat.T / temperature
  terms = []
  for a in range(b * v):
    for p in range(b * v):
      if p == a or p // v != a // v:
        continue
      if positives_in_denominator:
        others = [k for k in range(b * v) if k != a]
      else:
        others = [p] + [k for k in range(b * v) if k // v != a // v]
      terms.append(logsumexp(s[a, others]) - s[a, p])
  return np.mean(terms)


@pytest.mark.parametrize("rho", [2, 4])
@pytest.mark.parametrize("positives_in_denominator", [True, False])
def test_loss_and_gradient_match_numpy(rho, positives_in_denominator):
  z = random_embeddings(0, 3, rho, 5)
  f = lambda x: multi_positive_nt_xent(x, T, positives_in_denominator=positives_in_denominator)[0]
  loss = jax.jit(f)(z)
  np.testing.assert_allclose(loss, numpy_simclr(z, T, positives_in_denominator), rtol=1e-5)
  grad = jax.jit(jax.grad(f))(z)
  expected = numeric_grad(lambda x: numpy_simclr(x, T, positives_in_denominator), z)
  np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


def test_two_clips_is_the_symmetric_nt_xent():
  # rho = 2: both variants are the reference's two-clip NT-Xent (mean over the 2N anchors).
  z = random_embeddings(1, 4, 2, 6)
  a = multi_positive_nt_xent(z, T, positives_in_denominator=True)[0]
  b = multi_positive_nt_xent(z, T, positives_in_denominator=False)[0]
  np.testing.assert_allclose(a, b, rtol=1e-6)


def test_accuracy_counts_anchors_whose_nearest_clip_is_a_positive():
  # Two videos whose clips sit on two orthogonal directions: every anchor is right.
  z = np.zeros((2, 3, 4), np.float32)
  z[0, :, 0] = 1.0
  z[1, :, 1] = 1.0
  z += random_embeddings(2, 2, 3, 4) * 0.01
  _, metrics = multi_positive_nt_xent(z, T)
  assert float(metrics["contrastive_accuracy"]) == 1.0


def test_eight_devices_equal_one_device_on_the_concatenated_batch():
  z = random_embeddings(3, 16, 4, 8)  # 16 videos over 8 devices, 2 per device
  f = lambda x: jax.value_and_grad(lambda y: multi_positive_nt_xent(y, T)[0])(x)
  sharded_equals_single(f, z)



def test_clips_must_match_the_configured_rho():
  from cvrl.objectives import rho  # pylint: disable=import-outside-toplevel
  video = np.zeros((2, 3, 4, 8, 8, 3), np.float32)
  assert rho.clips_of({"video": video}, 3) is video
  with pytest.raises(ValueError, match="rho = 2"):
    rho.clips_of({"video": video}, 2)


def reference_pair_loss(a, b, temperature):
  """pySlowFast's two-clip SimCLR loss, written out: rows [a; b], each row's positive the
  other clip of its video, its softmax over all other rows; mean over the 2B rows."""
  out = l2n(np.concatenate([a, b]))
  n = len(a)
  sim = out @ out.T / temperature
  terms = []
  for r in range(2 * n):
    others = np.delete(sim[r], r)
    terms.append(logsumexp(others) - sim[r, (r + n) % (2 * n)])
  return np.mean(terms)


def test_rho_4_pairs_consecutive_clips_as_the_reference():
  from cvrl.objectives.simclr import consecutive_pairs  # pylint: disable=import-outside-toplevel
  z = random_embeddings(11, 5, 4, 6)
  got = consecutive_pairs(lambda x: multi_positive_nt_xent(x, 0.1), z)[0]
  want = sum(reference_pair_loss(z[:, k], z[:, k + 1], 0.1) for k in range(3))
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # 'all' pairs is a different loss.
  assert abs(float(multi_positive_nt_xent(z, 0.1)[0]) - want) > 1e-2


def test_paper_config_pairs_consecutive_clips_and_rejects_unknown_pairing():
  from cvrl import config_lib  # pylint: disable=import-outside-toplevel
  from cvrl.objectives import base  # pylint: disable=import-outside-toplevel
  from objective_checks import load_config  # pylint: disable=import-outside-toplevel
  for name in ("simclr", "swav"):
    config = load_config(f"{name}_k400_slowr50", "rho=4")
    assert config.objective.pairing == "consecutive"
    config.unlock()
    config.objective.pairing = "random"
    with pytest.raises(ValueError, match="pairing"):
      base.method(**config_lib.method_args(config))


def test_a_method_is_made_from_its_own_fields_and_rejects_others():
  """A method's constructor is its config schema (cvrl.core.schema): config.objective's
  keys are its keyword arguments, typed as their defaults; an unknown key names the
  nearest field; a checkpoint's stored config drops the fields the method no longer takes."""
  from cvrl import config_lib, objectives  # pylint: disable=import-outside-toplevel
  from cvrl.objectives import simclr, swav  # pylint: disable=import-outside-toplevel
  encoder = objectives.EncoderSpec.of(config_lib.default_model_config())
  run = objectives.Run(batch_size=8, total_steps=100, num_train_examples=36)
  spec = dict(simclr.objective_config(), num_clips=3, temperature=1)
  made = objectives.get(spec, encoder, run)
  assert (made.name, made.num_clips, made.temperature, made.pairing) == (
      "simclr", 3, 1.0, "consecutive")
  assert isinstance(made.temperature, float) and made.sampler() == {"name": "rho", "num_clips": 3}
  with pytest.raises(ValueError, match="unknown key 'temprature' for name 'simclr'; did you "
                     "mean 'temperature'"):
    objectives.get(dict(spec, temprature=0.2), encoder, run)
  with pytest.raises(ValueError, match="config.objective.num_clips: "):
    objectives.get(dict(spec, num_clips="three"), encoder, run)
  assert objectives.get(dict(spec, loss_impl="global"), encoder, run, stored=True).num_clips == 3
  # Epochs of a duration in steps from the run: ceil(2 x 36 / 8) = 9.
  frozen = objectives.get(dict(swav.objective_config(), freeze_prototypes_epochs=2), encoder, run)
  assert frozen.freeze_prototypes_steps == 9


def test_a_methods_defaults_keep_the_type_of_a_field_that_may_be_none():
  """`objective_config()` is read off the constructor: a field annotated `int | None` is a
  typed placeholder in the config, so an override is cast or refused, never taken as is."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from cvrl.objectives import moco, swav  # pylint: disable=import-outside-toplevel
  c = ml_collections.ConfigDict(moco.objective_config())
  assert c.queue_devices is None
  c.queue_devices = 4
  with pytest.raises(TypeError, match="queue_devices"):
    c.queue_devices = "four"
  s = ml_collections.ConfigDict(swav.objective_config())
  assert (s.freeze_prototypes_epochs, s.freeze_prototypes_steps) == (1, None)
  s.freeze_prototypes_epochs = None  # a duration in steps instead
  with pytest.raises(TypeError, match="freeze_prototypes_steps"):
    s.freeze_prototypes_steps = 0.5
