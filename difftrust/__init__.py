"""difftrust: a differentiable trust-region linear program with linear constraints.

>>> from difftrust import TrustRegionStep
>>> step = TrustRegionStep(delta=0.01)

See :class:`TrustRegionStep` and ``docs/difftrust.md``.
"""

from difftrust.cg import CGResult, conjugate_gradient
from difftrust.layer import StepResult, TrustRegionStep, trust_region_step
from difftrust.metrics import DenseMetric, FisherMetric, Metric, OperatorMetric

__version__ = "0.1.0"

__all__ = [
    "CGResult",
    "DenseMetric",
    "FisherMetric",
    "Metric",
    "OperatorMetric",
    "StepResult",
    "TrustRegionStep",
    "__version__",
    "conjugate_gradient",
    "trust_region_step",
]
