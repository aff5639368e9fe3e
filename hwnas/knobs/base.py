"""The knob contract and the registry of knobs.

A knob is one way to compress the base model (keep fewer channels, prune globally, drop heads,
lower the precision...). One module per knob holds everything about it: its ``knobs.<name>``
YAML section, the Optuna parameters it suggests, what "cheaper" means for the engine's uniform
ladders, how it changes the model, what the pre-flight check tries, and its part of the
Candidate record. Subclassing ``Knob`` with a ``name`` registers it (as Olive's passes do):
the search space, the record, pruning and pre-flight all walk ``registered()``. An installed
package adds its knobs through the entry point group ``hwnas.knobs`` (loaded once, the first
time the registry or a search space is read).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Hashable, Mapping, Sequence

from optuna.distributions import BaseDistribution, CategoricalDistribution

from hwnas.config.fields import Frozen
from hwnas.config.models import add_knob_section

if TYPE_CHECKING:
    from hwnas.config.models import DeviceProfile

#: (parameter name, default) -> the value suggested, or the default where the space has no
#: such parameter (the knob is off, or this unit is not searched)
Pick = Callable[[str, Any], Any]


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What a knob may ask of the base model, found once per search."""

    model: Any  # the base nn.Module (attention already split into prunable heads)
    stages: Mapping[str, Sequence[str]]  # stage -> module-name prefixes (resolved)
    num_classes: int
    round_to: int  # the device's channel multiple


class Knob(abc.ABC):
    """One compression knob. Values are hashable (a Candidate is a dict key): tuples of
    (unit, value) pairs, strings, numbers."""

    name: ClassVar[str]  # its key under ``knobs:`` and in the Candidate
    config: ClassVar[type[Frozen] | None] = None  # its YAML section (None: it has none)
    enabled_by_default: ClassVar[bool] = True  # the section's default: on, or null
    order: ClassVar[int] = 100  # suggested (and summarised) in this order
    apply_order: ClassVar[int] = 100  # applied to the model in this order
    # the engine's uniform ladders (hwnas/space.py uniform_ladders): "rungs": its uniform
    # settings, largest first, are the rungs of every ladder; "ladders": one ladder per
    # uniform setting; "fixed": held at its least destructive choice
    ladder_role: ClassVar[str] = "fixed"
    advice: ClassVar[str] = ""  # the way out when pre-flight finds it breaks the model
    # the models it applies to (SearchSpace.family): "vision" (CNNs, ViTs: pruned through
    # torch-pruning's graph) or "causal_lm" (language models: hwnas/knobs/llm.py)
    family: ClassVar[str] = "vision"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            register(cls())

    # --- the space ---------------------------------------------------------------------

    def settings(self, knobs: Any) -> Any:
        """Its section of a search space's ``knobs`` (None: off)."""
        return getattr(knobs, self.name, None)

    def units(self, settings: Any, model: ModelParts) -> Mapping[str, Any]:
        """What its parameters range over in this model: unit -> what it acts on."""
        return {}

    def excluded(self, settings: Any, model: ModelParts) -> list[Any]:
        """Modules it must leave alone."""
        return []

    def shape(self, settings: Any, units: Sequence[str], device: "DeviceProfile"
              ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """(units searched, choices the device allows), or ConfigError naming the key."""
        return (tuple(units) if settings is not None else ()), ()

    @abc.abstractmethod
    def distributions(self, settings: Any, units: Sequence[str], choices: Sequence[Any]
                      ) -> dict[str, BaseDistribution]:
        """Its Optuna parameters (only called while it is on)."""

    @abc.abstractmethod
    def suggest(self, pick: Pick, settings: Any, units: Sequence[str],
                chosen: Mapping[str, Hashable]) -> Hashable | None:
        """Its value for one trial, define-by-run (``chosen``: the knobs suggested before it);
        None: it takes no part in this candidate."""

    @abc.abstractmethod
    def neutral(self, units: Sequence[str]) -> Hashable:
        """The value that leaves the model as it is."""

    # --- the engine's ordering --------------------------------------------------------

    def least_destructive(self, params: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        """Its parameters at the choice that changes the model least (default: the first)."""
        return {name: dist.choices[0] for name, dist in params.items()
                if isinstance(dist, CategoricalDistribution)}

    def uniform(self, params: Mapping[str, BaseDistribution]) -> list[dict[str, Any]]:
        """Its uniform settings (the same choice for every unit), least destructive first."""
        return [self.least_destructive(params)]

    # --- the record --------------------------------------------------------------------

    def normalize(self, value: Any) -> Hashable:
        """A value as the Candidate holds it (e.g. a mapping as sorted pairs)."""
        return value

    @abc.abstractmethod
    def record(self, value: Any) -> dict[str, Any]:
        """Its keys of Candidate.to_dict (JSON)."""

    @abc.abstractmethod
    def read(self, data: Mapping[str, Any]) -> Hashable | None:
        """Its value from Candidate.to_dict's JSON, as stored by any hwnas (None: not there)."""

    def summary(self, value: Any, values: Mapping[str, Any]) -> str:
        return ""

    # --- applied to the model -------------------------------------------------------------

    def changes_structure(self, value: Any) -> bool:
        """Whether it prunes the model (pre-flight tries the structural ones)."""
        return False

    def prune(self, work: Any, value: Any) -> None:
        """Change the model being pruned through ``work`` (hwnas/compress/prune.py PruneWork:
        the copy, its dependency graph, the criterion), which records each step in the
        channel plan that rebuilds the model."""

    # --- pre-flight ------------------------------------------------------------------------

    def most_aggressive(self, settings: Any, units: Sequence[str]) -> Hashable:
        return self.neutral(units)

    def alone(self, value: Any) -> list[tuple[str, Hashable]]:
        """Its value split into parts tried one at a time: (what to call it, value)."""
        return []

    def check_pruned(self, setup: Any, value: Any, pruned: Any) -> str | None:
        """A reason the pruned model shows that the knob cannot work as asked, or None
        (``setup``: the PruningSetup it was pruned with)."""
        return None


_REGISTRY: dict[str, Knob] = {}
ENTRY_POINT_GROUP = "hwnas.knobs"
_plugins_loaded = False  # every plug-in registered (a failed load is tried, and said, again)
_plugins_loading = False  # a plug-in's own import reads the registry: no second pass


def load_plugins() -> None:
    """The knobs installed packages declare (entry point group ``hwnas.knobs``, naming a Knob
    subclass, a Knob, or a module that defines them), once: importing a subclass with a
    ``name`` registers it. A plug-in that cannot be loaded is one ConfigError naming it, raised
    again at every later call until it is mended. (Nothing in hwnas.knobs may read the
    registry while the package imports: a plug-in's ``from hwnas.knobs import Knob`` would
    meet a half-imported package.)"""
    global _plugins_loaded, _plugins_loading
    if _plugins_loaded or _plugins_loading:
        return
    from hwnas.entry_points import installed_plugins

    _plugins_loading = True
    try:
        for where, found in installed_plugins(ENTRY_POINT_GROUP, "knob"):
            _register_plugin(where, found)
        _plugins_loaded = True
    finally:
        _plugins_loading = False


def _register_plugin(where: str, found: Any) -> None:
    import types

    from hwnas.errors import ConfigError

    if isinstance(found, type) and issubclass(found, Knob):
        name = getattr(found, "name", None)
        if not name:
            raise ConfigError(f"{where}: the class {found.__qualname__} has no name (a knob "
                              f"is a Knob subclass with a name, its YAML key)")
        found = _REGISTRY.get(name) or found()  # subclassing registered it
    if isinstance(found, Knob):
        try:
            register(found)
        except ValueError as exc:  # a name taken, or not an identifier
            raise ConfigError(f"{where}: {exc}") from None
    elif not isinstance(found, types.ModuleType):
        raise ConfigError(f"{where} is not an hwnas.knobs.Knob subclass, a Knob or a module "
                          f"of them")
    elif not any(type(k).__module__ == found.__name__ for k in _REGISTRY.values()):
        raise ConfigError(f"{where}: the module {found.__name__} defines no knob (a Knob "
                          f"subclass with a name)")


def register(knob: Knob) -> Knob:
    """List a knob (done by subclassing Knob with a ``name``); its YAML section is added."""
    if not knob.name.isidentifier():
        raise ValueError(f"knob name {knob.name!r}: use a Python identifier (it is a YAML key)")
    old = _REGISTRY.get(knob.name)
    if old is not None and (type(old).__module__, type(old).__qualname__) != \
            (type(knob).__module__, type(knob).__qualname__):
        raise ValueError(f"knob {knob.name!r} is already registered by {type(old).__module__}."
                         f"{type(old).__qualname__}")
    _REGISTRY[knob.name] = knob
    if knob.config is not None:
        add_knob_section(knob.name, knob.config, knob.enabled_by_default, knob.family)
    return knob


def unregister(name: str) -> None:
    """Take a knob (and its YAML section) away again: a test's own knob, once it is done."""
    gone = _REGISTRY.pop(name, None)
    if gone is not None and gone.config is not None:
        add_knob_section(name, None, False)


def registered(family: str | None = None) -> list[Knob]:
    """Every knob (of ``family``, where given), in suggestion order."""
    load_plugins()
    return sorted((k for k in _REGISTRY.values() if family in (None, k.family)),
                  key=lambda k: (k.order, k.name))


def knob(name: str) -> Knob:
    load_plugins()
    return _REGISTRY[name]


def pairs(mapping: Mapping[str, Any] | Sequence[tuple[str, Any]] | None
          ) -> tuple[tuple[str, Any], ...]:
    """A mapping as the sorted (key, value) pairs a Candidate holds."""
    items = mapping.items() if isinstance(mapping, Mapping) else (mapping or ())
    return tuple(sorted(items))
