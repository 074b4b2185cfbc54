"""nas-sepconv: convert CNNs to separable convolutions, and search the accuracy-vs-MACs front.

Model -> plan -> converted model -> trial -> DataFrame, one package per stage::

    import nas_sepconv as ns
    plan = ns.make_plan(model, "dwsep", example_inputs=x)    # conversion/planning.py, sites.py
    model2 = ns.apply_plan(model, plan, init="svd")          # conversion/rewrite.py, blocks/closed_form*.py
    ns.refit(model2, model, batches)                         # conversion/least_squares.py
    plan = ns.plan_for_budget(model, ns.sensitivity(model, batches),      # conversion/budget.py
                              macs_ratio=0.25, example_inputs=x)
    small = ns.prune(model, x, macs_ratio=0.5)              # conversion/pruning.py (DepGraph)
    table = ns.latency_table(model, x, runtime="onnxruntime")  # conversion/latency.py, measure/runtimes.py
    program = ns.export_program(model2, x)                  # measure/program.py (torch.export)
    ns.to_onnx(model2, x, "m.onnx")                          # measure/onnx.py (dynamo exporter)
    study = ns.search("default", trials=24)                  # search/
    df = ns.results.load("results/default")                  # results/
"""

from . import results  # (the search imports it anyway)
from .blocks import KINDS, BlockSpec, ConvGeometry
from .conversion import (
    ExampleInputs,
    LatencyTable,
    Plan,
    PlanEntry,
    PlanWarning,
    Policy,
    apply_plan,
    convert,
    fidelity,
    latency_table,
    make_plan,
    optimize_for_inference,
    plan_for_budget,
    plan_of,
    predict_latency,
    prune,
    refit,
    sensitivity,
)
from .data import Dataset
from .errors import CandidateError, NasSepconvError, TrainingDiverged, UserInputError
from .io import load_model, save_model
from .measure import count_macs, count_params, export_program, measure_latency, profile, to_onnx
from .models import model_from_name
from .search import search  # the function (the package re-exports it under its own name)
from .train import TrainConfig, distill, init_distributed, is_main_process

__version__ = "0.1.0"


__all__ = [
    "BlockSpec",
    "CandidateError",
    "ConvGeometry",
    "Dataset",
    "ExampleInputs",
    "KINDS",
    "LatencyTable",
    "NasSepconvError",
    "Plan",
    "PlanEntry",
    "PlanWarning",
    "Policy",
    "TrainConfig",
    "TrainingDiverged",
    "UserInputError",
    "apply_plan",
    "convert",
    "count_macs",
    "count_params",
    "distill",
    "export_program",
    "fidelity",
    "init_distributed",
    "is_main_process",
    "latency_table",
    "load_model",
    "make_plan",
    "measure_latency",
    "model_from_name",
    "optimize_for_inference",
    "plan_for_budget",
    "plan_of",
    "predict_latency",
    "prune",
    "profile",
    "refit",
    "results",
    "save_model",
    "search",
    "sensitivity",
    "to_onnx",
]
