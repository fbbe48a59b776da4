"""unlearn_jax: machine unlearning for diffusion models in JAX/Flax."""
__version__ = "0.1.0"
