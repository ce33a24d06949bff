"""cvrl: self-supervised video representation learning in JAX/Flax, TPU-first."""

import jax as _jax

__version__ = "0.1.0"

# Random bits from the 'rbg' generator rather than threefry: XLA:CPU takes minutes to
# compile a model initialiser of a few dozen threefry draws (seconds with rbg), and rbg is
# the faster generator on TPU too. Keys stay reproducible for a given backend and seed.
_jax.config.update("jax_default_prng_impl", "rbg")
