"""cvrl: self-supervised video representation learning in JAX/Flax, TPU-first.

Importing cvrl changes no global JAX setting; each job sets what it needs while it runs
(`cvrl.core.runtime.job`).
"""

__version__ = "0.1.0"
