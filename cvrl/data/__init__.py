"""Input pipeline: host sources, temporal sampling, clip augmentation, batching; device finish.

Entry points: `config.default_data_config()`, `sources` (the data sources, one module each,
and their counts), `samplers` (one module each), `pipeline.build_dataset(...)`,
`pipeline.iterate(ds, stats)` on the host (tf.data), `device.finish_batch(batch,
config.data)` at the start of every jitted step (JAX: uint8 video -> float32 [0, 1] with
the photometric augmentation applied), `sources.prepare(data, splits)` (what a source
writes before it is opened: the synthetic source's shards; every job calls it first),
`sources.synthetic.write_synthetic_shards(...)` and the converter `python -m
cvrl.data.convert`.
"""
