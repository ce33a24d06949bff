"""Temporal samplers, one module per sampler, found by the name a sampler dict gives
(cvrl.core.discovery): `make(options, num_frames, stride, train) -> sampling.Sampler` pops
the options it takes. The index functions they draw from are cvrl.data.sampling's."""
