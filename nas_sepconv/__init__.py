"""nas-sepconv: convert CNNs to separable convolutions, and search the accuracy-vs-MACs front.

Model -> plan -> converted model:

    import nas_sepconv as ns
    plan = ns.make_plan(model, "dwsep", example_inputs=x)
    model2 = ns.apply_plan(model, plan, init="svd")
"""

from .errors import CandidateError, NasSepconvError, TrainingDiverged, UserInputError
from .geometry import ConvGeometry
from .plan import Plan, PlanEntry, Policy, make_plan
from .profile import count_macs, count_params, measure_latency, profile
from .rewrite import apply_plan, convert, plan_of
from .specs import KINDS, BlockSpec

__version__ = "0.1.0"

__all__ = [
    "BlockSpec",
    "CandidateError",
    "ConvGeometry",
    "KINDS",
    "NasSepconvError",
    "Plan",
    "PlanEntry",
    "Policy",
    "TrainingDiverged",
    "UserInputError",
    "apply_plan",
    "convert",
    "count_macs",
    "count_params",
    "make_plan",
    "measure_latency",
    "plan_of",
    "profile",
]
