"""The Pareto plot: the data (arrays of the trials, fronts and knee) computed apart from the
drawing.  matplotlib is imported inside the drawing functions only, with the Agg canvas (no
pyplot, no global figure state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import UserInputError
from .front import eligible_rows, knee, loss_matrix, non_dominated_mask, resolve_directions
from .objectives import AXIS_LABELS, LOG_SCALE_COLUMNS, PERCENT_COLUMNS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import matplotlib.axes

__all__ = ["plot_fronts", "plot_pareto"]

_COLOURS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


@dataclass(frozen=True)
class _Front2D:
    """The arrays one scatter of trials and its front are drawn from."""

    x_all: np.ndarray  # eligible trials (COMPLETE, finite x and y), plotted units
    y_all: np.ndarray
    on_front: np.ndarray  # bool per eligible trial
    x_front: np.ndarray  # front points sorted by x
    y_front: np.ndarray
    numbers: np.ndarray  # trial numbers of the front points (or index labels)
    drawstyle: str
    infeasible: int = 0  # COMPLETE trials over a hard budget (``feasible`` False): not drawn
    # trials the multi-fidelity mode stopped early (at their last rung's objectives): drawn apart
    x_stopped: np.ndarray = field(default_factory=lambda: np.empty(0))
    y_stopped: np.ndarray = field(default_factory=lambda: np.empty(0))


@dataclass(frozen=True)
class _ParetoPlotData:
    main: _Front2D
    baselines: dict[str, _Front2D] = field(default_factory=dict)
    knee_xy: tuple[float, float] | None = None
    knee_number: Any = None
    x_label: str = ""
    y_label: str = ""
    x_log: bool = False
    y_log: bool = False
    reference_xy: tuple[float, float] | None = None  # the original model (``df.attrs["base"]``)


def _scale(column: str) -> float:
    return 100.0 if column in PERCENT_COLUMNS else 1.0


def _front_2d(df: pd.DataFrame, x: str, y: str, dirs: Sequence[str]) -> _Front2D:
    losses = loss_matrix(df, (x, y), dirs)
    ok = eligible_rows(df, losses)
    eligible = df.iloc[np.flatnonzero(ok)]
    on_front = non_dominated_mask(losses[ok])
    xs = pd.to_numeric(eligible[x]).to_numpy(dtype="float64", na_value=np.nan) * _scale(x)
    ys = pd.to_numeric(eligible[y]).to_numpy(dtype="float64", na_value=np.nan) * _scale(y)
    stopped = df.iloc[np.flatnonzero(eligible_rows(df, losses, include_stopped=True) & ~ok)]
    order = np.lexsort((losses[ok][on_front, 1], xs[on_front]))
    numbers = eligible["number"].to_numpy() if "number" in eligible.columns else eligible.index.to_numpy()
    return _Front2D(
        x_all=xs,
        y_all=ys,
        on_front=on_front,
        x_front=xs[on_front][order],
        y_front=ys[on_front][order],
        numbers=numbers[on_front][order],
        # Attainment boundary: the best y for an x budget holds until the next front point
        # when x is minimised (steps-post), and from the previous one when x is maximised.
        drawstyle="steps-post" if dirs[0] == "minimize" else "steps-pre",
        infeasible=_count_infeasible(df),
        x_stopped=pd.to_numeric(stopped[x]).to_numpy(dtype="float64", na_value=np.nan) * _scale(x),
        y_stopped=pd.to_numeric(stopped[y]).to_numpy(dtype="float64", na_value=np.nan) * _scale(y),
    )


def _count_infeasible(df: pd.DataFrame) -> int:
    if "feasible" not in df.columns:
        return 0
    over = (df["feasible"].astype("boolean") == False).fillna(False).to_numpy(dtype=bool)  # noqa: E712
    if "state" in df.columns:
        over &= (df["state"].astype("string") == "COMPLETE").fillna(False).to_numpy(dtype=bool)
    return int(over.sum())


def _axis_label(column: str, log: bool) -> str:
    label = AXIS_LABELS.get(column, column)
    if log:
        label = label[:-1] + ", log scale)" if label.endswith(")") else label + " (log scale)"
    return label


def _reference_xy(df: pd.DataFrame, x: str, y: str) -> tuple[float, float] | None:
    """The original model's point (``df.attrs["base"]`` of a convert search), plotted units."""
    base = df.attrs.get("base")
    if not isinstance(base, Mapping) or base.get(x) is None or base.get(y) is None:
        return None
    point = (float(base[x]) * _scale(x), float(base[y]) * _scale(y))
    return point if all(np.isfinite(point)) else None


def _pareto_plot_data(
    df: pd.DataFrame, *, x: str, y: str, baselines: Mapping[str, pd.DataFrame] | None, annotate_knee: bool
) -> _ParetoPlotData:
    dirs = resolve_directions(df, (x, y), None)
    main = _front_2d(df, x, y, dirs)
    others = {}
    for name, base in (baselines or {}).items():
        missing = [c for c in (x, y) if c not in base.columns]
        if missing:
            raise UserInputError(
                "baselines",
                f"baseline {name!r} lacks column(s) {missing}",
                f"give baselines with {x!r} and {y!r} columns",
            )
        others[name] = _front_2d(base, x, y, dirs)
    knee_xy, knee_number = None, None
    if annotate_knee and len(main.x_front) >= 3:
        row = knee(df, objectives=(x, y), directions=dirs)
        knee_xy = (float(row[x]) * _scale(x), float(row[y]) * _scale(y))
        knee_number = row["number"] if "number" in row.index else row.name
    reference = _reference_xy(df, x, y)
    extra = [np.array([reference[0]])] if reference else []
    everything = [main.x_all] + [b.x_all for b in others.values()] + extra
    x_values = np.concatenate(everything) if everything else np.empty(0)
    every_y = np.concatenate(
        [main.y_all] + [b.y_all for b in others.values()] + ([np.array([reference[1]])] if reference else [])
    )
    x_log = x in LOG_SCALE_COLUMNS and len(x_values) > 0 and bool((x_values > 0).all())
    y_log = y in LOG_SCALE_COLUMNS and len(every_y) > 0 and bool((every_y > 0).all())
    return _ParetoPlotData(
        main=main,
        baselines=others,
        knee_xy=knee_xy,
        knee_number=knee_number,
        x_label=_axis_label(x, x_log),
        y_label=_axis_label(y, y_log),
        x_log=x_log,
        y_log=y_log,
        reference_xy=reference,
    )


def _new_axes(figsize: tuple[float, float] = (7.0, 4.8)) -> matplotlib.axes.Axes:
    """A fresh Axes on an Agg canvas, without pyplot's global figure registry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig.add_subplot()


def _draw_off_front(ax: matplotlib.axes.Axes, main: _Front2D) -> None:
    """The dominated trials, faded; those stopped early, as hollow triangles."""
    dominated = ~main.on_front
    if dominated.any():
        ax.scatter(
            main.x_all[dominated],
            main.y_all[dominated],
            s=14,
            color="tab:gray",
            alpha=0.3,
            linewidths=0,
            label=f"dominated trials ({int(dominated.sum())})",
        )
    if len(main.x_stopped):  # the multi-fidelity mode's: not trained to the end, never on the front
        ax.scatter(
            main.x_stopped,
            main.y_stopped,
            s=16,
            marker="v",
            facecolors="none",
            edgecolors="tab:gray",
            alpha=0.6,
            linewidths=0.7,
            label=f"stopped early, at their last rung ({len(main.x_stopped)})",
        )


def _draw_front(ax: matplotlib.axes.Axes, main: _Front2D) -> None:
    """The Pareto front: its step line and points, and the count of over-budget trials."""
    if len(main.x_front):
        ax.plot(main.x_front, main.y_front, drawstyle=main.drawstyle, color="tab:blue", linewidth=1.5, zorder=3)
        ax.scatter(
            main.x_front,
            main.y_front,
            s=30,
            color="tab:blue",
            edgecolors="black",
            linewidths=0.5,
            zorder=4,
            label=f"Pareto front ({len(main.x_front)})",
        )
    if main.infeasible:  # not trained (accuracy 0): left out, but said so
        ax.plot(
            [], [], linestyle="none", marker="x", color="tab:red", label=f"over budget, not shown ({main.infeasible})"
        )


def _draw_baseline_fronts(ax: matplotlib.axes.Axes, baselines: Mapping[str, _Front2D]) -> None:
    """Each baseline's front as a labelled dashed step line, one colour each."""
    for i, (name, base) in enumerate(baselines.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        if len(base.x_front):
            ax.plot(
                base.x_front,
                base.y_front,
                drawstyle=base.drawstyle,
                color=colour,
                linewidth=1.2,
                linestyle="--",
                marker="o",
                markersize=4,
                zorder=2,
                label=name,
            )


def _draw_reference(ax: matplotlib.axes.Axes, xy: tuple[float, float]) -> None:
    """The original model's point, with a dotted line at its y."""
    ax.axhline(xy[1], color="black", linestyle=":", linewidth=1.0, zorder=1)
    ax.scatter(
        [xy[0]],
        [xy[1]],
        marker="X",
        s=90,
        color="black",
        zorder=5,
        label="original model",
    )


def _draw_knee(ax: matplotlib.axes.Axes, xy: tuple[float, float], number: Any) -> None:
    """The knee of the front, a star labelled with its trial number."""
    ax.scatter(
        [xy[0]],
        [xy[1]],
        marker="*",
        s=160,
        color="tab:red",
        edgecolors="black",
        linewidths=0.5,
        zorder=5,
        label="knee",
    )
    ax.annotate(f"trial {number}", xy, xytext=(8, -14), textcoords="offset points", fontsize=8)


def _finish_axes(
    ax: matplotlib.axes.Axes, *, x_label: str, y_label: str, x_log: bool, y_log: bool, title: Any
) -> matplotlib.axes.Axes:
    """Scales, labels, title, grid and legend, the same for every plot of this module."""
    if x_log:
        ax.set_xscale("log")
    if y_log:
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    if title:
        ax.set_title(str(title))
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8, frameon=True)
    return ax


def plot_pareto(
    df: pd.DataFrame,
    *,
    ax: matplotlib.axes.Axes | None = None,
    x: str = "macs",
    y: str = "accuracy",
    baselines: Mapping[str, pd.DataFrame] | None = None,
    title: str | None = None,
    annotate_knee: bool = True,
) -> matplotlib.axes.Axes:
    """Scatter of the trials with their Pareto front (accuracy vs MACs by default).

    MACs, params and latency go on a log axis; accuracies are shown in %.  Dominated trials are
    faded, front trials highlighted and joined by a step line tracing the attainable region;
    each baseline (name -> frame, e.g. a random-search study or the hand-designed MobileNets)
    adds its own front as a labelled step line.  The knee (see :func:`knee`) is marked when the
    front has at least three points.  A convert search's original model (``df.attrs["base"]``)
    is marked, with a dotted line at its y.  Only COMPLETE, feasible trials with finite values
    are drawn; over-budget ones (``feasible`` False) are counted in the legend; those the
    multi-fidelity mode stopped early are drawn as hollow triangles at their last rung's
    accuracy, apart from the front.

    Args:
        df: a frame from :func:`load`.
        ax: the Axes to draw on; a new figure (Agg canvas, no pyplot) when None.
        x, y: the columns on each axis.
        baselines: other frames whose fronts are drawn for comparison.
        title: the title; by default the study name from ``df.attrs``.
        annotate_knee: mark and label the knee point.

    Returns:
        The Axes (``ax.figure.savefig(...)`` to write it).
    """
    data = _pareto_plot_data(df, x=x, y=y, baselines=baselines, annotate_knee=annotate_knee)
    if ax is None:
        ax = _new_axes()
    main = data.main
    _draw_off_front(ax, main)
    _draw_front(ax, main)
    _draw_baseline_fronts(ax, data.baselines)
    if data.reference_xy is not None:  # what every candidate is compared against
        _draw_reference(ax, data.reference_xy)
    if data.knee_xy is not None:
        _draw_knee(ax, data.knee_xy, data.knee_number)
    if not len(main.x_all) and not data.baselines:
        ax.text(0.5, 0.5, "no completed trials yet", ha="center", va="center", transform=ax.transAxes, color="tab:gray")
    title = title if title is not None else df.attrs.get("study")
    return _finish_axes(ax, x_label=data.x_label, y_label=data.y_label, x_log=data.x_log, y_log=data.y_log, title=title)


def plot_fronts(
    studies: Mapping[str, pd.DataFrame],
    *,
    baselines: Mapping[str, pd.DataFrame] | None = None,
    ax: matplotlib.axes.Axes | None = None,
    x: str = "macs",
    y: str = "accuracy",
    title: str | None = None,
) -> matplotlib.axes.Axes:
    """The Pareto fronts of several studies on one plot, one colour and label per study.

    Each study (name -> frame, e.g. a searched space) is drawn as its trials, faded, and its
    front as a solid step line; each baseline (e.g. the ``mobilenetv2_width_digits`` study, a
    hand-designed family run like a search) as a dashed step line through its front.  Axes as
    in :func:`plot_pareto` (MACs on a log axis, accuracies in %); only COMPLETE, feasible trials
    with finite values are drawn.  :func:`compare` gives the same studies' hypervolumes.

    Returns:
        The Axes (``ax.figure.savefig(...)`` to write it).
    """
    if not isinstance(studies, Mapping) or not studies:
        raise UserInputError("studies", "expected a non-empty mapping name -> DataFrame", "pass e.g. {'default': df1}")
    frames = {**dict(studies), **dict(baselines or {})}
    for name, df in frames.items():
        missing = [c for c in (x, y) if not isinstance(df, pd.DataFrame) or c not in df.columns]
        if missing:
            raise UserInputError(
                "baselines" if name not in studies else "studies",
                f"{name!r} lacks column(s) {missing}",
                f"give frames with {x!r} and {y!r} columns",
            )
    dirs = resolve_directions(next(iter(frames.values())), (x, y), None)
    fronts = {name: _front_2d(df, x, y, dirs) for name, df in frames.items()}
    if ax is None:
        ax = _new_axes()
    for i, (name, front) in enumerate(fronts.items()):
        colour = "tab:blue" if i == 0 else _COLOURS[(i - 1) % len(_COLOURS)]
        searched = name in studies
        if searched and len(front.x_all):
            ax.scatter(
                front.x_all[~front.on_front], front.y_all[~front.on_front], s=12, color=colour, alpha=0.25, linewidths=0
            )
        if len(front.x_front):
            ax.plot(
                front.x_front,
                front.y_front,
                drawstyle=front.drawstyle,
                color=colour,
                linewidth=1.5 if searched else 1.2,
                linestyle="-" if searched else "--",
                marker="o",
                markersize=5 if searched else 4,
                zorder=3 if searched else 2,
                label=f"{name} ({len(front.x_front)} on the front)",
            )
    every_x = np.concatenate([f.x_all for f in fronts.values()])
    every_y = np.concatenate([f.y_all for f in fronts.values()])
    if not len(every_x):
        ax.text(0.5, 0.5, "no completed trials yet", ha="center", va="center", transform=ax.transAxes, color="tab:gray")
    x_log = x in LOG_SCALE_COLUMNS and len(every_x) > 0 and bool((every_x > 0).all())
    y_log = y in LOG_SCALE_COLUMNS and len(every_y) > 0 and bool((every_y > 0).all())
    return _finish_axes(
        ax, x_label=_axis_label(x, x_log), y_label=_axis_label(y, y_log), x_log=x_log, y_log=y_log, title=title
    )
