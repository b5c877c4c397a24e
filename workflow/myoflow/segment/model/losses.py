"""Training losses on probability maps."""

from __future__ import annotations

import torch

DICE_EPSILON = 1e-6


def soft_dice_loss(
    probabilities: torch.Tensor, target: torch.Tensor, epsilon: float = DICE_EPSILON
) -> torch.Tensor:
    """One minus the soft Dice, averaged over samples and channels.

    Uses V-Net's (Milletari et al. 2016) form ``2 sum(p t) / (sum(p^2) + sum(t^2))`` per
    sample and channel: with soft (partial-volume) targets its only optimum is ``p = t``,
    whereas the ``sum(p) + sum(t)`` form rewards pushing ``p`` to 0 or 1.

    Args:
        probabilities: (N, C, X, Y, Z) in [0, 1].
        target: same shape, soft targets in [0, 1].
        epsilon: keeps empty channels finite (an empty target predicted empty scores 0).

    Returns:
        A scalar: 0 for a perfect prediction, 1 for a prediction disjoint from the target.

    Raises:
        ValueError: the shapes differ or are not (N, C, ...).
    """
    if probabilities.shape != target.shape or probabilities.ndim < 3:
        raise ValueError(
            f"prediction {tuple(probabilities.shape)} and target {tuple(target.shape)} "
            "must share one (N, C, ...) shape"
        )
    p = probabilities.flatten(2)
    t = target.to(p.dtype).flatten(2)
    overlap = (p * t).sum(-1)
    total = (p * p).sum(-1) + (t * t).sum(-1)
    dice = (2.0 * overlap + epsilon) / (total + epsilon)
    return 1.0 - dice.mean()
