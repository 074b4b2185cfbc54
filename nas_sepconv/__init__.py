"""nas-sepconv: convert CNNs to separable convolutions, and search the accuracy-vs-MACs front.

Model -> plan -> converted model -> trial -> DataFrame::

    import nas_sepconv as ns
    plan = ns.make_plan(model, "dwsep", example_inputs=x)    # plan.py
    model2 = ns.apply_plan(model, plan, init="svd")          # rewrite.py, decompose.py
    ns.refit(model2, model, batches)                         # refit.py
    plan = ns.plan_for_budget(model, ns.sensitivity(model, batches), macs_ratio=0.25, example_inputs=x)  # budget.py
    study = ns.search("default", trials=24)                  # spaces.py, search.py
    df = ns.results.load("results/default")                  # results.py
"""

from .conversion import plan_for_budget, sensitivity
from .errors import CandidateError, NasSepconvError, TrainingDiverged, UserInputError
from .blocks import ConvGeometry
from .io import load_model, save_model
from .models import model_from_name
from .conversion import optimize_for_inference
from .conversion import Plan, PlanEntry, Policy, make_plan
from .measure import count_macs, count_params, measure_latency, profile
from .conversion import fidelity, refit
from .conversion import apply_plan, convert, plan_of
from .search.run import search  # the function; binding it here keeps ns.search a function after any import of the submodule
from .blocks import KINDS, BlockSpec
from .data import Dataset
from .train import TrainConfig, distill

__version__ = "0.1.0"


def __getattr__(name: str):
    """``ns.results`` loads Optuna and matplotlib's helpers, so it is imported on first use."""
    if name == "results":
        import importlib

        return importlib.import_module(".results", __name__)
    raise AttributeError(f"module 'nas_sepconv' has no attribute {name!r}")

__all__ = [
    "BlockSpec",
    "CandidateError",
    "ConvGeometry",
    "Dataset",
    "KINDS",
    "NasSepconvError",
    "Plan",
    "PlanEntry",
    "Policy",
    "TrainConfig",
    "TrainingDiverged",
    "UserInputError",
    "apply_plan",
    "convert",
    "count_macs",
    "count_params",
    "distill",
    "fidelity",
    "load_model",
    "make_plan",
    "measure_latency",
    "model_from_name",
    "optimize_for_inference",
    "plan_for_budget",
    "plan_of",
    "profile",
    "refit",
    "results",
    "save_model",
    "search",
    "sensitivity",
]
