"""Tiny Meta-CPO configurations shared by the tests (seconds per meta-iteration)."""

from __future__ import annotations

from rl.meta_cpo import MetaCPOConfig

TINY = dict(
    iterations=2,
    meta_batch=2,
    inner_steps=1,
    batch_steps=400,
    num_envs=2,
    hidden=(8,),
    critic_hidden=(16,),
    critic_epochs=1,
    test_tasks=1,
    adapt_steps=0,
    progress=False,
    tensorboard=False,
    backend="serial",
)


def tiny_meta_config(**overrides) -> MetaCPOConfig:
    """A small, fast, serial configuration; keyword arguments override its fields."""
    return MetaCPOConfig(**{**TINY, **overrides})
