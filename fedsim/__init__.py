"""fedsim: a discrete-event simulator of asynchronous federated learning with real PyTorch training.

>>> import fedsim
>>> result = fedsim.run("scenarios/quickstart.yaml", stop__time_s=60)   # doctest: +SKIP
>>> result.evals.tail()                                                  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from fedsim.errors import FedsimError, ScenarioError, SimulationError
from fedsim.learning.user_data import Dataset
from fedsim.scenario import Scenario, load_scenario
from fedsim.simulation import Result, Simulation, run

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
