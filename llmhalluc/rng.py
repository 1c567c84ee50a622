"""Random state: one seed for every generator a stage draws from, so a CPU run repeats exactly."""

from __future__ import annotations


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (transformers' set_seed), so CPU runs repeat exactly."""
    from transformers import set_seed

    set_seed(seed, deterministic=False)
