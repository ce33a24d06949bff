"""Host input pipeline: sources, temporal sampling, clip augmentation, batching.

Entry points: `config.default_data_config()`, `pipeline.build_dataset(...)`,
`pipeline.iterate(ds, stats)`, `synthetic.write_synthetic_shards(...)` and the converter
`python -m cvrl.data.convert`.
"""
