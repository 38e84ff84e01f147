"""A user's aggregators and attacks, written from their definitions (not from fedsim's code)."""

from __future__ import annotations

import torch


def user_mean(updates, weights):
    """Weighted mean Σ w_i u_i / Σ w_i."""
    coeffs = weights / weights.sum()
    return (coeffs.to(updates.dtype)[:, None] * updates).sum(0)


def user_median(updates, weights):
    """Coordinate-wise median (equal weights): the middle value, or the midpoint of the two."""
    ordered = updates.sort(dim=0).values
    n = updates.shape[0]
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def user_sign_flip(delta, w_start, generator, *, scale=1.0):
    """Send the honest delta negated."""
    return -scale * delta


def user_ipm(honest, n_total, f, *, epsilon=0.1):
    """Inner-product manipulation: -ε times the honest mean."""
    return -epsilon * honest.mean(0)


def user_noise(delta, w_start, generator, *, std=1.0):
    """Gaussian noise from the job's generator."""
    return std * torch.randn(delta.shape, generator=generator, dtype=delta.dtype)


def wrong_shape(updates, weights):
    return updates


def returns_list(updates, weights):
    return [0.0] * updates.shape[1]


def raises(updates, weights):
    raise ValueError("no aggregation today")


def fails_in_run(updates, weights):
    """Passes the probe (3 coordinates), fails on a real model."""
    if updates.shape[1] != 3:
        raise RuntimeError("only three coordinates please")
    return updates.mean(0)


NOT_A_FUNCTION = 42


def register(plugins):
    """An entry point's register function: one aggregator and one attack by name."""
    plugins.register_aggregator("user_median", user_median)
    plugins.register_attack("user_flip", user_sign_flip, "client")
