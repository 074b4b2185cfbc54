"""The lookup helper (nas_sepconv/tables.py) and the tables read through it: every unknown name
is one error shape, ``<field>: unknown <what> <name>; use one of: a, b, c``."""

from __future__ import annotations

import typing

import pytest

from nas_sepconv.blocks.kinds import KINDS, kind_by_name
from nas_sepconv.conversion import INITS, PRUNING_IMPORTANCES, init_method, pruning_importance
from nas_sepconv.data.sources import DATASETS, find_dataset
from nas_sepconv.errors import UserInputError
from nas_sepconv.measure.runtimes import RUNTIMES, find_runtime
from nas_sepconv.results.modes import SEARCH_MODES, search_mode
from nas_sepconv.results.objectives import OBJECTIVES, objective
from nas_sepconv.search.finalize_starts import FINALIZE_STARTS, finalize_start
from nas_sepconv.search.pruners import PRUNERS, find_pruner
from nas_sepconv.search.samplers import SAMPLERS, find_sampler
from nas_sepconv.search.schema import ConvertSection, SearchSection, SpaceFile
from nas_sepconv.search.space_kinds import SPACE_KINDS, space_kind
from nas_sepconv.tables import lookup, unknown_name


def test_lookup_returns_the_record():
    table = {"a": 1, "b": 2}
    assert lookup(table, "b", field="f", what="thing") == 2


@pytest.mark.parametrize("name", ["c", None, 3, ["a"], ""])
def test_lookup_error_names_the_field_the_name_and_the_choices(name):
    with pytest.raises(UserInputError) as info:
        lookup({"a": 1, "b": 2}, name, field="search.thing", what="thing")
    e = info.value
    assert (e.field, e.problem, e.fix) == ("search.thing", f"unknown thing {name!r}", "use one of: a, b")
    assert str(e) == f"search.thing: unknown thing {name!r}; use one of: a, b"


def test_lookup_lists_the_given_names_for_a_table_keyed_by_aliases():
    aliases = {"a": "alpha", "alpha": "alpha"}
    assert lookup(aliases, "a", field="f", what="x", names=["alpha"]) == "alpha"
    with pytest.raises(UserInputError, match=r"^f: unknown x 'b'; use one of: alpha$"):
        lookup(aliases, "b", field="f", what="x", names=["alpha"])
    assert str(unknown_name("b", field="f", what="x", names=["alpha"])) == "f: unknown x 'b'; use one of: alpha"


@pytest.mark.parametrize(
    ("find", "field", "what", "names"),
    [
        (find_runtime, "runtime", "runtime", list(RUNTIMES)),
        (find_sampler, "sampler", "sampler", list(SAMPLERS)),
        (objective, "search.objectives", "objective", list(OBJECTIVES)),
        (kind_by_name, "kind", "block kind", list(KINDS)),
        (lambda n: find_dataset(n)[0], "dataset", "data set", [s.usage for s in DATASETS.values()]),
        (find_pruner, "search.pruner", "pruner", list(PRUNERS)),
        (search_mode, "search.mode", "search mode", list(SEARCH_MODES)),
        (space_kind, "kind", "space kind", list(SPACE_KINDS)),
        (init_method, "init", "initialisation", list(INITS)),
        (pruning_importance, "importance", "pruning importance", list(PRUNING_IMPORTANCES)),
        (finalize_start, "search.finalize_from", "finalisation start", list(FINALIZE_STARTS)),
    ],
)
def test_every_table_has_the_one_error_shape(find, field, what, names):
    with pytest.raises(UserInputError) as info:
        find("nope")
    assert str(info.value) == f"{field}: unknown {what} 'nope'; use one of: {', '.join(names)}"


@pytest.mark.parametrize(
    ("section", "field", "table"),
    [
        (SearchSection, "mode", SEARCH_MODES),
        (SearchSection, "pruner", PRUNERS),
        (SpaceFile, "kind", SPACE_KINDS),
        (ConvertSection, "init", INITS),
        (SearchSection, "finalize_from", FINALIZE_STARTS),
    ],
)
def test_the_schema_choices_are_the_tables_names(section, field, table):
    assert typing.get_args(section.model_fields[field].annotation) == tuple(table)


def test_every_space_kind_names_its_section_and_epochs():
    for kind in SPACE_KINDS.values():
        assert kind.section in SpaceFile.model_fields
        assert kind.epochs_field.partition(".")[0] in SpaceFile.model_fields
    assert {k.recipe_kind for k in SPACE_KINDS.values()} == {"built", "converted"}  # what saved recipes say


def test_every_search_mode_names_known_things():
    for mode in SEARCH_MODES.values():
        assert mode.metric is None or mode.metric in OBJECTIVES
        assert mode.sampler is None or mode.sampler in SAMPLERS
        assert set(mode.needs) <= set(SearchSection.model_fields)
    assert SEARCH_MODES["scalarised"].metric_names(["accuracy", "macs"]) == ["reward"]
    assert SEARCH_MODES["pareto"].metric_names(["accuracy", "macs"]) == ["accuracy", "macs"]
