"""fedsim: a discrete-event simulator of asynchronous federated learning with real PyTorch training.

>>> import fedsim
>>> result = fedsim.run("scenarios/quickstart.yaml", stop__time_s=60)   # doctest: +SKIP
>>> result.evals.tail()                                                  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from fedsim.errors import FedsimError, ScenarioError, SimulationError
from fedsim.learning.user_data import Dataset
from fedsim.result import Result
from fedsim.scenario import Scenario, load_scenario


def __getattr__(name: str) -> object:
    """``Simulation`` and ``run`` load the engine on first use: reading run directories
    (``Result``, ``fedsim.plots``) does not import it."""
    if name in ("Simulation", "run"):
        from fedsim import simulation

        globals()[name] = value = getattr(simulation, name)
        return value
    raise AttributeError(f"module 'fedsim' has no attribute {name!r}")


__all__ = [
    "Dataset",
    "FedsimError",
    "Result",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "SimulationError",
    "__version__",
    "load_scenario",
    "run",
]
