"""Placeholder data config until the pipeline lands (replaced by the data package)."""
import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      source="synthetic", path="", num_frames=16, stride=2, crop_size=224,
      num_train_examples=None, num_classes=None))
