"""experiments/bench_step: the pure parts of its MFU (peak table, arithmetic, the model's
FLOPs per step) and the allocator's peak memory. The command itself runs in
tests/test_no_tensorflow.py (config mode, with TensorFlow blocked)."""
import types

import pytest

from cvrl.jobs import summary
from experiments import bench_step as B


@pytest.mark.parametrize("kind,chip,tflops", [
    ("NVIDIA H200", "H200", 989.0),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("TPU v4", "TPU v4", 275.0),
    ("TPU v5 lite", "TPU v5e", 197.0),
    ("TPU v5e", "TPU v5e", 197.0),
    ("TPU v5", "TPU v5p", 459.0),
    ("TPU v5p", "TPU v5p", 459.0),
    ("TPU v6 lite", "TPU v6e", 918.0),
])
def test_bf16_peak_by_device_kind(kind, chip, tflops):
  assert B.bf16_peak(kind) == (chip, tflops * 1e12)


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "NVIDIA GeForce RTX 4090", "", "TPU v7"])
def test_unknown_device_kinds_have_no_peak(kind):
  assert B.bf16_peak(kind) is None


def test_mfu_arithmetic_by_hand():
  # 8.3 TFLOP per step in 0.15 s = 55.33 TFLOP/s; over one 989 TFLOP/s chip 5.595%.
  assert B.utilisation(8.3e12, 0.15, 989e12) == pytest.approx(0.055948, rel=1e-4)
  assert B.utilisation(8.3e12, 0.15, 989e12, devices=2) == pytest.approx(0.027974, rel=1e-4)
  assert B.utilisation(8.3e12, 0.15, None) is None


def test_a_train_step_is_three_forwards_of_every_clip():
  assert B.TRAIN_STEP_FORWARDS == 3
  assert B.train_step_flops(86.14e9, 64) == pytest.approx(3 * 86.14e9 * 64)


def test_model_flops_are_the_summary_jobs_count():
  """forward_flops is the figure `summary` reports per clip, and it follows the clip."""
  config = B.load_config("configs/demo.py:probe=False",
                         ["data.num_frames=4", "data.crop_size=16", "job=summary"])
  small = summary.parse(config)
  reported = summary.summarize(small)["gflops_per_clip"]
  forward = summary.forward_flops(small)
  assert forward / 1e9 == pytest.approx(reported, rel=1e-5)
  assert summary.forward_flops(small, (4, 16, 16, 3)) == forward
  config.data.update(num_frames=8, crop_size=32)
  large = summary.parse(config)
  bigger = summary.summarize(large)["gflops_per_clip"]
  assert summary.forward_flops(large, (4, 16, 16, 3)) == forward
  assert summary.forward_flops(large) / 1e9 == pytest.approx(bigger, rel=1e-5)
  assert bigger > 4 * reported


def _device(stats=None, error=None):
  def memory_stats():
    if error:
      raise error
    return stats
  return types.SimpleNamespace(memory_stats=memory_stats)


def test_allocator_peak_is_the_largest_over_devices_or_none():
  assert B.allocator_peak_bytes([_device(None)]) is None  # the CPU backend
  assert B.allocator_peak_bytes([_device(error=NotImplementedError())]) is None
  assert B.allocator_peak_bytes([_device({"bytes_in_use": 5})]) is None
  devices = [_device({"peak_bytes_in_use": 7, "bytes_in_use": 3}), _device(None),
             _device({"peak_bytes_in_use": 11})]
  assert B.allocator_peak_bytes(devices) == 11
