"""Search-space files: finding them by name or path, reading them safely, validating them
(against :mod:`.schema`).

A space is a YAML file (``search_spaces/*.yaml``, found by name from a checkout and from an
installed wheel alike, or any path).  Two kinds:

* ``build``: a MobileNetV2/V3-style skeleton (stages with repeats, stride, width) with per-stage
  choices of block kind, kernel, ``expand_ratio``, ``se_ratio``, ``act``..., global
  ``width_mult``, ``depth_mult``, ``resolution_mult``; candidates are trained from scratch.
* ``convert``: a base model (by name or import path) whose conv sites, alone or in groups that
  share one choice, get a block kind (``keep`` included) and its options; global ``width_mult``
  (Torch-Pruning) and ``resolution_mult``; candidates start from the base model's trained
  weights (closed-form init, refit) and are fine-tuned, by distillation from the base.

A choice is a list (categorical), a range ``{low, high, step, log}`` or a single value (fixed,
not searched).  Which block options are suggested for a kind is read from the kind registry
(:data:`nas_sepconv.blocks.KINDS`): a stage whose kind is ``dwsep`` is never asked for
``expand_ratio``.  Parameter names: ``width_mult``, ``depth_mult``, ``resolution_mult``,
``act``, ``stage<i>.<option>`` (build) and ``<group>.<option>`` (convert); see :mod:`.suggestion`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..data import find_dataset
from ..errors import UserInputError
from .choices import LIMITS, printable
from .schema import MultiFidelitySection, SpaceFile, check_multi_fidelity

__all__ = [
    "Space",
    "load_space",
    "parse_space",
    "list_spaces",
    "space_dirs",
    "with_data_memory",
    "with_data_root",
    "with_multi_fidelity",
]

MAX_SPACE_BYTES = 1 << 20
"""The largest space file read (1 MiB): a space is a page of YAML, not data."""


@dataclass(frozen=True)
class Space:
    """A validated search space and where it came from."""

    spec: SpaceFile
    path: Path | None
    text: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


def space_dirs() -> list[Path]:
    """Where bundled spaces live: ``search_spaces/`` of a checkout, and the installed package data."""
    dirs = [Path(__file__).resolve().parents[2] / "search_spaces"]
    try:
        from importlib.resources import files

        dirs.append(Path(str(files("nas_sepconv.search_spaces"))))
    except (ModuleNotFoundError, TypeError):
        pass
    return [d for i, d in enumerate(dirs) if d.is_dir() and d not in dirs[:i]]


def list_spaces() -> dict[str, str]:
    """Bundled spaces: name -> one-line description."""
    found: dict[str, str] = {}
    for d in space_dirs():
        for path in sorted(d.glob("*.yaml")):
            if path.stem not in found:
                try:
                    found[path.stem] = load_space(path).spec.description.strip().splitlines()[0]
                except (UserInputError, IndexError):
                    found[path.stem] = "(invalid)"
    return found


def _locate(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    try:
        exists = path.exists()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise UserInputError(
            "space",
            f"{str(name_or_path)[:80]!r} is not a usable path ({type(exc).__name__})",
            "give a YAML file or a bundled name (nas-sepconv spaces)",
        ) from None
    if path.suffix in (".yaml", ".yml") or exists:
        if not exists:
            raise UserInputError(
                "space", f"{path} does not exist", "give a YAML file or a bundled name (nas-sepconv spaces)"
            )
        if path.is_dir():
            raise UserInputError(
                "space", f"{path} is a directory, not a space file", "give the path of a YAML file inside it"
            )
        if not path.is_file():  # a device, a FIFO, a socket: reading it could block or never end
            raise UserInputError("space", f"{path} is not a regular file", "give a YAML file")
        return path
    for d in space_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    names = sorted({p.stem for d in space_dirs() for p in d.glob("*.yaml")})
    raise UserInputError(
        "space", f"no bundled space named {str(name_or_path)!r}", f"use one of {names} or a path to a YAML file"
    )


def _read_text(path: Path) -> str:
    """The text of a space file: at most :data:`MAX_SPACE_BYTES` bytes of UTF-8."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SPACE_BYTES + 1)  # bounded even if the size on disk lies
    except OSError as exc:
        raise UserInputError(
            "space",
            f"{path} cannot be read ({exc.strerror or type(exc).__name__})",
            "check the path and its permissions",
        ) from None
    if len(data) > MAX_SPACE_BYTES:
        raise UserInputError(
            "space",
            f"{path} is larger than {MAX_SPACE_BYTES} bytes, too big for a space file",
            "give a YAML search-space file",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserInputError(
            "space", f"{path} is not UTF-8 text (a binary file?)", "give a YAML search-space file"
        ) from None


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (
            part in ("list[union[bool,int,float,str,none]]", "Range", "bool", "int", "float", "str", "none")
            or "[" in str(part)
            or str(part).startswith(("function-", "literal"))
        ):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _one_line(exc: ValidationError, source: str) -> UserInputError:
    errors = exc.errors()
    # prefer the most specific error (longest location) of the first field that failed
    first = max((e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]), key=lambda e: len(e["loc"]))
    field = _field_path(first["loc"]) or "space"
    msg = first["msg"].removeprefix("Value error, ")
    inner = first.get("ctx", {}).get("error")
    fix = f"fix it in {source}"
    if isinstance(inner, UserInputError):  # raised by a validator: its field lies below the location
        path = _field_path(first["loc"])  # (TrainConfig's errors name train.<field> already)
        field = inner.field if inner.field.startswith(f"{path}.") else f"{path}.{inner.field}".lstrip(".")
        msg = inner.problem
        fix = f"{inner.fix}; {fix}" if inner.fix else fix
    elif first["type"] == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        msg = f"got {first.get('input')!r}; allowed values: {expected}"
    elif first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # (the second: a TrainConfig field)
        msg = "unknown field"
    others = {_field_path(e["loc"]) for e in errors} - {_field_path(first["loc"])}  # union alternatives share a path
    more = f" (and {len(others)} more problems)" if others else ""
    return UserInputError(printable(field), printable(f"{msg}{more}"), printable(fix))


def load_space(name_or_path: str | Path | Space) -> Space:
    """A validated space from a bundled name or a YAML path."""
    if isinstance(name_or_path, Space):
        return name_or_path
    path = _locate(name_or_path)
    text = _read_text(path)
    return parse_space(text, source=str(path), path=path)


class _TooDeep(Exception):
    pass


class _SpaceLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing deep nesting and alias bombs before they cost time."""

    _depth = 0
    _aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > LIMITS.aliases:
                raise _TooDeep(f"uses more than {LIMITS.aliases} YAML aliases")
        self._depth += 1
        try:
            if self._depth > LIMITS.nesting:
                raise _TooDeep(f"nests deeper than {LIMITS.nesting} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the limits of :class:`_SpaceLoader` (a SafeLoader: plain values only)."""
    loader = _SpaceLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_space(text: str, *, source: str = "<text>", path: Path | None = None) -> Space:
    """Validate the YAML text of a space (safe loader; nothing is imported or executed)."""
    if not isinstance(text, str):
        raise UserInputError(
            "space",
            f"{source} gave {type(text).__name__}, not text",
            "pass the YAML as a str (or a path to load_space)",
        )
    if len(text) > MAX_SPACE_BYTES:
        raise UserInputError(
            "space",
            f"{source} is longer than {MAX_SPACE_BYTES} characters, too big for a space",
            "give a YAML search-space file",
        )
    try:
        data = _safe_load(text)
    except _TooDeep as exc:
        raise UserInputError(
            "space", f"{source} {exc.args[0]}", "a space is a few levels of plain mappings and lists"
        ) from None
    except yaml.constructor.ConstructorError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserInputError(
            "space",
            f"{source} uses a tag the safe YAML loader refuses{where} ({exc.problem})",
            "spaces hold plain values only; remove the !!tag",
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserInputError("space", f"{source} is not valid YAML{where}", "check indentation and colons") from None
    if not isinstance(data, dict):
        raise UserInputError(
            "space", f"{source} must hold a mapping with name, kind, ...", "see search_spaces/default.yaml"
        )
    try:
        spec = SpaceFile.model_validate(data)
    except ValidationError as exc:
        raise _one_line(exc, source) from None
    except RecursionError:
        raise UserInputError(
            "space", f"{source} nests too deeply", "a space is a few levels of mappings and lists"
        ) from None
    except UserInputError as exc:
        raise UserInputError(printable(exc.field), printable(exc.problem), printable(f"fix it in {source}")) from None
    return Space(_paths_from(spec, path.parent) if path is not None else spec, path, text)


def _from_folder(value: str, folder: Path) -> str:
    """A path a space file names, relative to the file's folder (``~`` expanded)."""
    try:
        p = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user: kept as written; loading it names data.root
        p = Path(value)
    return str(p if p.is_absolute() else folder.absolute() / p)  # (no file-system call: any text is safe here)


def _paths_from(spec: SpaceFile, folder: Path) -> SpaceFile:
    """``spec`` with the paths it names (``data.root``, ``imagefolder:PATH``, ``convert.weights``)
    resolved against ``folder``, the space file's: a relative path means the same files from any
    working directory.  (The space's text, stored in the study, is kept as written.)"""
    data = spec.data
    kind, sep, arg = data.dataset.partition(":")
    changes = {}
    if data.root:
        changes["root"] = _from_folder(data.root, folder)
    if sep and arg and kind.strip().lower() == "imagefolder":
        changes["dataset"] = f"{kind}:{_from_folder(arg, folder)}"
    update: dict[str, Any] = {"data": data.model_copy(update=changes)} if changes else {}
    if spec.convert is not None and spec.convert.weights:
        update["convert"] = spec.convert.model_copy(update={"weights": _from_folder(spec.convert.weights, folder)})
    return spec.model_copy(update=update) if update else spec


def with_data_root(space: Space, root: str | Path) -> Space:
    """``space`` reading its data from ``root`` (``--data-root``; relative to the working
    directory) instead of its ``data.root``."""
    source, arg = find_dataset(space.spec.data.dataset)
    if not source.needs_root or arg:
        raise UserInputError(
            "data_root",
            f"space {space.name!r} reads data set {space.spec.data.dataset!r}, which takes no root folder",
            "leave data_root= out",
        )
    data = space.spec.data.model_copy(update={"root": str(Path(root).expanduser().resolve())})
    return dataclasses.replace(space, spec=space.spec.model_copy(update={"data": data}))


def with_data_memory(space: Space, *, stream: bool | None, budget_gb: float | None) -> Space:
    """``space`` with its data set streamed or held as ``stream`` says and ``budget_gb`` of memory
    (``--stream``, ``--memory-budget``); None keeps the space's ``data.stream``/``data.memory_budget_gb``."""
    changes: dict[str, Any] = {}
    if stream is not None:
        if not isinstance(stream, bool):
            raise UserInputError("stream", f"expected True, False or None, got {stream!r}", "pass stream=True")
        changes["stream"] = stream
    if budget_gb is not None:
        if isinstance(budget_gb, bool) or not isinstance(budget_gb, (int, float)) or not 0 < budget_gb <= 1e6:
            raise UserInputError(
                "memory_budget_gb", f"must be a number of GB in (0, 1e6], got {budget_gb!r}", "give e.g. 4"
            )
        changes["memory_budget_gb"] = float(budget_gb)
    if not changes:
        return space
    data = space.spec.data.model_copy(update=changes)
    return dataclasses.replace(space, spec=space.spec.model_copy(update={"data": data}))


def with_multi_fidelity(space: Space, setting: bool | Mapping[str, int] | None) -> Space:
    """``space`` with its multi-fidelity mode (``search.multi_fidelity``) as ``setting`` says:
    None keeps the space's; False turns it off; True turns it on (the space's rungs, else
    ``min_epochs`` 1 and ``eta`` 3); a mapping ``{"min_epochs": .., "eta": ..}`` sets it."""
    if setting is None:
        return space
    current = space.spec.search.multi_fidelity
    if isinstance(setting, bool):
        section = (current or MultiFidelitySection()) if setting else None
    elif isinstance(setting, Mapping):
        try:
            section = MultiFidelitySection.model_validate(dict(setting))
        except ValidationError as exc:
            first = exc.errors()[0]
            inner = first.get("ctx", {}).get("error")  # a validator's own error names its field
            if isinstance(inner, UserInputError):
                where, msg = inner.field, inner.problem
            else:
                where = _field_path(first["loc"])
                msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
            field = ".".join(["search.multi_fidelity", where]).rstrip(".")
            raise UserInputError(field, msg, "give {'min_epochs': an integer >= 1, 'eta': an integer >= 2}") from None
    else:
        raise UserInputError(
            "multi_fidelity",
            f"expected True, False, None or a mapping, got {type(setting).__name__}",
            "pass e.g. multi_fidelity=True or {'min_epochs': 1, 'eta': 3}",
        )
    spec = space.spec.model_copy(update={"search": space.spec.search.model_copy(update={"multi_fidelity": section})})
    check_multi_fidelity(spec)
    return dataclasses.replace(space, spec=spec)
