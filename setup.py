"""cvrl: self-supervised video representation learning in JAX/Flax."""
import setuptools

setuptools.setup(
    name="cvrl",
    version="0.1.0",
    description="Self-supervised video representation learning (CVRL and friends) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["cvrl", "cvrl.*"]),
    python_requires=">=3.10",
    # Bounds: from the versions the suite passed with (.ci/constraints.txt pins them exactly)
    # up to the next release that may break the API (flax's nnx changes between minors).
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        # The input pipeline runs on host CPUs beside JAX: the CPU build is the right pick.
        "tensorflow-cpu>=2.21.0,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        "ml-collections>=1.1.0,<2",
        "orbax-checkpoint>=0.12.8,<0.13",
        "absl-py>=2.5.1,<3",
        # Every user path (workdir, checkpoints, data, pretrained=) goes through etils.epath,
        # as orbax's own paths do; gcsfs is its gs:// backend when TensorFlow's is not used.
        "etils[epath]>=1.15.0,<2",
        "gcsfs>=2026.10.1,<2027",
    ],
    extras_require={
        # PyAV decodes videos for `python -m cvrl.data.convert` (it bundles FFmpeg).
        "convert": ["av"],
        # matplotlib draws the benchmarks' plots; without it they write JSON and Markdown only.
        "plots": ["matplotlib"],
        # scipy: the sampler's Kolmogorov-Smirnov test; av: the converter's round trip;
        # pytest-xdist: the suite on two workers (XLA compiles on one core);
        # gcp-storage-emulator: a GCS API on 127.0.0.1 for the gs:// tests; matplotlib: plots.
        "test": ["pytest", "pytest-xdist", "scipy", "av", "gcp-storage-emulator", "matplotlib"],
    },
)
