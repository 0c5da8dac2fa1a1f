"""difftrust: a differentiable trust-region linear program with linear constraints.

>>> from difftrust import TrustRegionStep
>>> step = TrustRegionStep(delta=0.01)

See :class:`TrustRegionStep` and ``docs/difftrust.md``.
"""

from difftrust.cg import CGNotConvergedWarning, CGResult, conjugate_gradient
from difftrust.layer import StepResult, TrustRegionStep, trust_region_step
from difftrust.metrics import CholeskyMetric, DenseMetric, FisherMetric, Metric, OperatorMetric
from difftrust.reduced import MAX_ACTIVE_SET_M, ReducedSolution, solve_reduced

__version__ = "0.2.0"  # the version of the distribution (pyproject.toml reads it here)

__all__ = [
    "MAX_ACTIVE_SET_M",
    "CGNotConvergedWarning",
    "CGResult",
    "CholeskyMetric",
    "DenseMetric",
    "FisherMetric",
    "Metric",
    "OperatorMetric",
    "ReducedSolution",
    "StepResult",
    "TrustRegionStep",
    "__version__",
    "conjugate_gradient",
    "solve_reduced",
    "trust_region_step",
]
