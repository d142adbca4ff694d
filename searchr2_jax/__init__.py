"""searchr2_jax: Search-R2 (Actor + Meta-Refiner search agents trained with RL) in JAX."""

__version__ = "0.1.0"
