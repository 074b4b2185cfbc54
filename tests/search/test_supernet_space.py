"""A build space file as a supernet's space: what it enumerates, and that every arch the
search draws from the space runs through the supernet."""

from __future__ import annotations

import optuna
import pytest
import torch

from nas_sepconv.errors import UserInputError
from nas_sepconv.oneshot import Supernet, extract
from nas_sepconv.oneshot.supernet import resize
from nas_sepconv.search import load_space, parse_space, suggest
from nas_sepconv.search.supernet_space import MAX_STAGE_SPECS, supernet_space

SPACE = """\
name: ranges
kind: build
build:
  stem_channels: 8
  act: hswish
  head: [avgpool, gdc]
  stages:
    - out_channels: 16
      repeats: 2
      stride: 2
      kind: [inverted_residual, grouped]
      expand_ratio: {low: 2, high: 4}
      groups: {low: 2, high: 4, step: 2, int: true}
      shortcut: [true, false]
  width_mult: {low: 0.5, high: 1.0}
  resolution_mult: [0.5, 1.0]
"""


def test_the_default_space_enumerates_every_stage_choice():
    space = supernet_space(load_space("default"), input_shape=(1, 16, 16), num_classes=10)
    assert [len(s.specs) for s in space.stages] == [6, 16, 14]  # e.g. ir: 2 kernels x 2 ratios x 2 SE
    assert space.widths == (0.5, 0.75, 1.0) and space.depths == (0.5, 1.0)
    assert space.resolutions == (12, 16) and space.acts == ("relu", "hswish") and space.heads == ("avgpool",)
    assert (space.in_channels, space.num_classes, space.stem_channels) == (1, 10, 16)


def test_ranges_give_their_ends_or_their_points():
    space = supernet_space(parse_space(SPACE), input_shape=(3, 32, 32), num_classes=4)
    specs = sorted(str(s) for s in space.stages[0].specs)
    assert specs == ["grouped_g2", "grouped_g4", "ir_e2", "ir_e4"]
    assert space.widths == (0.5, 1.0) and space.resolutions == (16, 32)
    assert space.stages[0].shortcuts == (True, False) and space.heads == ("avgpool", "gdc")


@pytest.mark.parametrize("source", ["default", SPACE])
def test_every_arch_the_search_draws_runs_in_the_supernet(source):
    space = load_space(source) if source == "default" else parse_space(source)
    shape = (1, 16, 16)
    torch.manual_seed(0)
    supernet = Supernet(supernet_space(space, input_shape=shape, num_classes=10)).eval()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    x = torch.randn(2, *shape)
    for _ in range(6):
        arch = suggest(space, study.ask(), input_shape=shape, num_classes=10).recipe.arch
        torch.testing.assert_close(extract(supernet, arch)(resize(x, arch.input_size)), supernet(x, arch))


def test_a_convert_space_or_too_many_specs_are_refused():
    with pytest.raises(UserInputError, match="build space"):
        supernet_space(load_space("digits_convert"), input_shape=(1, 16, 16), num_classes=10)
    many = SPACE.replace(
        "groups: {low: 2, high: 4, step: 2, int: true}",
        "groups: {low: 2, high: 4000, int: true}\n      kernel_size: [3, 5]",
    )
    with pytest.raises(UserInputError, match=f"more than {MAX_STAGE_SPECS}"):
        supernet_space(parse_space(many), input_shape=(1, 16, 16), num_classes=10)
