"""GRPO advantages: rewards normalised within each task's group of rollouts.

``A_i = (r_i - mean_g) / (std_g + eps)`` over the ``G`` rollouts of the task of rollout ``i``
(DeepSeekMath's GRPO). Which std: ``population`` (ddof = 0, this project's default) or
``unbiased`` (ddof = 1, Bessel's correction: what verl's ``compute_grpo_outcome_advantage``
(``torch.std``) and TRL's ``GRPOTrainer`` (``nanstd``) use). For G = 4 the unbiased std is
``sqrt(4/3)`` ~ 1.15 times larger, so advantages are ~13% smaller; with Adam the difference is
mostly a rescaling, but it changes the balance against an entropy term.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

__all__ = ["ADV_STDS", "AdvStd", "group_advantages"]

AdvStd = Literal["population", "unbiased"]
#: Choices of the group std (``TrainConfig.adv_std``).
ADV_STDS: tuple[str, ...] = get_args(AdvStd)


def group_advantages(
    rewards: torch.Tensor, groups: torch.Tensor, eps: float, *, std: AdvStd = "population"
) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_g) / (std_g + eps)`` within each group.

    Args:
        rewards: (N,) float rewards.
        groups: (N,) int group id of each rollout (one group per task).
        eps: added to the group's std; groups whose rewards are all equal get exactly 0.
        std: ``population`` (ddof = 0) or ``unbiased`` (ddof = 1; a group of one then has std 0).

    Returns:
        (N,) float32 advantages.
    """
    if std not in ADV_STDS:
        raise ValueError(f"std must be one of {ADV_STDS}, got {std!r}")
    r = rewards.double()
    adv = torch.zeros_like(r)
    for g in torch.unique(groups):
        sel = groups == g
        x = r[sel]
        s = torch.zeros((), dtype=r.dtype)
        if x.numel() > 1:
            s = x.std(unbiased=std == "unbiased")
        adv[sel] = (x - x.mean()) / (s + eps)
    return adv.float()
