"""Evaluation: the loss (and metrics) as exact dataset means at many points of weight space.

``build`` is the one factory (``surface``, ``line``, ``project`` and Dask workers use it);
``Settings`` says how a run evaluates; ``STRATEGIES`` holds the ways to evaluate a block of
points; ``crumple.reference`` is the slow loop they are all checked against.
"""

from crumple.evaluation.choice import Choice, choose
from crumple.evaluation.engine import Evaluator, Task, build, prepare
from crumple.evaluation.extras import Extra
from crumple.evaluation.points import Points
from crumple.evaluation.settings import DEFAULT_MAX_MEMORY, Settings
from crumple.evaluation.strategies import STRATEGIES, Strategy, register

__all__ = [
    "Settings",
    "Points",
    "build",
    "prepare",
    "Task",
    "Evaluator",
    "Choice",
    "choose",
    "Strategy",
    "STRATEGIES",
    "register",
    "DEFAULT_MAX_MEMORY",
    "Extra",
]
