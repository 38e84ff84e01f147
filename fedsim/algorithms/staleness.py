"""Staleness weights ``s(k)``: how much an update that is ``k`` versions old still counts.

Pure functions of ``k`` (FedAsync, Xie et al. 2019; FedBuff uses ``polynomial`` with ``a = 0.5``).

>>> polynomial(3, a=0.5)
0.5
>>> hinge(5, a=10, b=4)
0.09090909090909091
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.config_base import Section


def constant(k: int) -> float:
    """Every update counts fully, however stale."""
    return 1.0


def polynomial(k: int, *, a: float) -> float:
    """``(k + 1) ** -a``: smooth decay."""
    return (k + 1.0) ** -a


def hinge(k: int, *, a: float, b: float) -> float:
    """1 up to ``b`` versions old, then ``1 / (a (k − b) + 1)``."""
    return 1.0 if k <= b else 1.0 / (a * (k - b) + 1.0)


class StalenessConfig(Section):
    """Staleness weight s(k) of an update k versions old."""

    kind: Literal["constant", "polynomial", "hinge"] = "polynomial"
    """constant: s=1; polynomial: s=(k+1)^-a; hinge: s=1 if k<=b else 1/(a(k-b)+1)."""
    a: float = Field(0.5, ge=0)
    """Decay exponent (polynomial) or slope (hinge)."""
    b: float = Field(4.0, ge=0)
    """Hinge: staleness up to which updates count fully."""

    def weight(self, k: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return polynomial(k, a=self.a)
        return hinge(k, a=self.a, b=self.b)
