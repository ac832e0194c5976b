"""Backends and judges named by spec strings, found through entry points, created once and shared.

A kind is a name registered in one of two entry-point groups, ``deepprune.backends`` and
``deepprune.judges``; the entry point's value is a factory ``factory(spec: Spec)`` returning a
``GenerationBackend`` or a ``Judge``. Every package registers its kinds the same way in its
``pyproject.toml``, the core included (``replay``, ``lexical``), so a third-party package adds a
backend with no change to this one::

    [project.entry-points."deepprune.backends"]
    mybackend = "my_package.plugin:make_backend"

Specs follow one grammar, ``kind:arg?key=value`` (``deepprune_lc.core.specs``), parsed here for
every kind; the factory gets the parsed ``Spec`` and validates its ``arg`` and ``options``.

Why entry points: ``check_backend_spec`` / ``check_judge_spec`` run when a ``DeepPruneReasoner`` is
constructed and must stay cheap, so they read entry-point *names* (package metadata) and never
import an outside package's factory module; that module (vLLM, torch, ...) is imported on the first
``resolve_backend`` / ``resolve_judge`` of that kind. Instances are shared per canonical spec string
(options sorted), across threads: every reasoner and call naming the same spec gets the same engine.

Checking a spec's argument at construction. A factory may carry a ``check(spec) -> None``
attribute (``factory_check`` attaches one) that validates the arg and options without creating
anything: that a file exists, that an option parses. It must be cheap (no engine, no model, no
network) and raises what creating would (``SpecError``, ``FileNotFoundError``, ...), naming the
problem and what to do. ``check_backend_spec`` / ``check_judge_spec`` call it only when that costs
no import of an outside package: for factories registered in code, factories whose module is
already imported, and the core's own kinds (modules of ``deepprune_lc``, which import no engine by
the import contracts), so ``DeepPruneReasoner(backend="replay:/missing.jsonl")`` fails at once,
naming the file. A kind whose module is not loaded yet is checked on its first ``resolve_*``; the
registry runs the check before every creation too, so both paths raise the same error.

Code that ships no package (a test, a notebook) registers a factory directly with
``register_backend(kind, factory)`` / ``register_judge(kind, factory)``. Entry points are listed
once per process; ``refresh_plugins()`` lists them again after a package is installed at run time.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, TypeVar

from deepprune_lc.core.ports import GenerationBackend, Judge
from deepprune_lc.core.specs import Spec, SpecError, parse_spec

__all__ = [
    "BACKEND_GROUP",
    "JUDGE_GROUP",
    "BackendFactory",
    "JudgeFactory",
    "backend_kinds",
    "check_backend_spec",
    "check_judge_spec",
    "factory_check",
    "judge_kinds",
    "refresh_plugins",
    "register_backend",
    "register_judge",
    "resolve_backend",
    "resolve_judge",
    "spec_display_name",
    "unregister_backend",
    "unregister_judge",
]

#: Entry-point group of backend factories, ``factory(spec) -> GenerationBackend``.
BACKEND_GROUP = "deepprune.backends"
#: Entry-point group of judge factories, ``factory(spec) -> Judge``.
JUDGE_GROUP = "deepprune.judges"

BackendFactory = Callable[[Spec], GenerationBackend]
JudgeFactory = Callable[[Spec], Judge]
#: A factory's optional ``check`` attribute: validate a spec without creating anything.
SpecCheck = Callable[[Spec], None]

_F = TypeVar("_F", bound=Callable[..., Any])


def factory_check(check: SpecCheck) -> Callable[[_F], _F]:
    """Decorator: attach ``check`` to a factory as its ``check`` attribute (module docstring).

    >>> @factory_check(check_my_spec)
    ... def make_backend(spec: Spec) -> MyBackend: ...
    """

    def attach(factory: _F) -> _F:
        factory.__dict__["check"] = check
        return factory

    return attach


#: First-party kinds that ship outside the core: named in the error when they are not installed.
_INSTALL_HINTS: dict[str, dict[str, str]] = {
    BACKEND_GROUP: {"vllm": "deepprune-vllm", "transformers": "deepprune-transformers"},
    JUDGE_GROUP: {
        "vllm": "deepprune-vllm",
        "transformers": "deepprune-transformers",
        "embedding": "deepprune-transformers",
    },
}

# One re-entrant lock for listings, registrations and instance caches: a factory may resolve
# another spec (a judge sharing a backend's engine) while its own creation holds the lock.
_lock = threading.RLock()
#: canonical spec string -> shared instance (module globals so tests can swap in empty ones).
_backends: dict[str, GenerationBackend] = {}
_judges: dict[str, Judge] = {}


@dataclass(frozen=True)
class _Source:
    """Where a kind's factory comes from: an entry point (loaded on first use) or code."""

    kind: str
    entry_point: EntryPoint | None = None
    factory: Callable[[Spec], Any] | None = None

    @property
    def distribution(self) -> str | None:
        dist = getattr(self.entry_point, "dist", None)
        return None if dist is None else str(dist.name)

    def describe(self) -> str:
        """The entry point (and its distribution) or the registered function, for messages."""
        if self.entry_point is None:
            name = getattr(self.factory, "__qualname__", repr(self.factory))
            module = getattr(self.factory, "__module__", None)
            return (
                f"registered in code: {module}.{name}" if module else f"registered in code: {name}"
            )
        ep = self.entry_point
        dist = getattr(ep, "dist", None)
        origin = f", from {dist.name} {dist.version}" if dist is not None else ""
        return f"entry point '{ep.name} = {ep.value}' in group {ep.group!r}{origin}"


class _Kinds:
    """One group's kinds: entry points (listed once, lazily) and factories registered in code."""

    def __init__(self, what: str, group: str, port: type[Any]) -> None:
        self.what = what
        self.group = group
        self.port = port
        self._listed: dict[str, list[EntryPoint]] | None = None
        self.registered: dict[str, Callable[[Spec], Any]] = {}

    def entry_points(self) -> dict[str, list[EntryPoint]]:
        """kind -> the entry points naming it (normally one); package metadata only, no import."""
        with _lock:
            if self._listed is None:
                listed: dict[str, list[EntryPoint]] = {}
                for ep in entry_points(group=self.group):
                    same = listed.setdefault(ep.name, [])
                    if all(other.value != ep.value for other in same):
                        same.append(ep)
                self._listed = listed
            return self._listed

    def forget_entry_points(self) -> None:
        with _lock:
            self._listed = None

    def kinds(self) -> list[str]:
        with _lock:
            return sorted({*self.entry_points(), *self.registered})

    def source(self, spec: Spec) -> _Source:
        """The registration for the spec's kind; ``SpecError`` if none (or several) exist."""
        with _lock:
            factory = self.registered.get(spec.kind)
            if factory is not None:
                return _Source(spec.kind, factory=factory)
            found = self.entry_points().get(spec.kind, [])
            if len(found) == 1:
                return _Source(spec.kind, entry_point=found[0])
            if found:
                where = "; ".join(_Source(spec.kind, entry_point=ep).describe() for ep in found)
                raise SpecError(
                    f"{self.what} {spec.raw!r}: kind {spec.kind!r} is registered more than once "
                    f"({where}); uninstall all but one"
                )
            kinds = ", ".join(repr(kind) for kind in self.kinds()) or "none"
            hint = _INSTALL_HINTS[self.group].get(spec.kind)
            install = f"; kind {spec.kind!r} comes with {hint}: pip install {hint}" if hint else ""
            raise SpecError(
                f"{self.what} {spec.raw!r}: unknown kind {spec.kind!r}{install} (registered "
                f"{self.what} kinds: {kinds})"
            )

    def load(self, spec: Spec, source: _Source) -> Callable[[Spec], Any]:
        """Import the entry point's module and fetch its factory, with errors that name both."""
        if source.factory is not None:
            return source.factory
        ep = source.entry_point
        assert ep is not None
        where = source.describe()
        reinstall = (
            f"; reinstall it: pip install {source.distribution}" if source.distribution else ""
        )
        try:
            target: Any = importlib.import_module(ep.module)
        except Exception as exc:
            raise ImportError(
                f"{self.what} {spec.raw!r}: kind {spec.kind!r} could not be loaded ({where}): "
                f"{type(exc).__name__}: {exc}{reinstall}"
            ) from exc
        for name in (ep.attr or "").split("."):
            if not name:
                continue
            try:
                target = getattr(target, name)
            except AttributeError as exc:
                dist = source.distribution or "package"
                raise NotImplementedError(
                    f"{self.what} {spec.raw!r}: the installed {dist} does not provide it "
                    f"({where}: {ep.module} has no {ep.attr!r})"
                ) from exc
        if not callable(target):
            raise TypeError(
                f"{self.what} {spec.raw!r}: kind {spec.kind!r} ({where}) is not a factory: "
                f"got {type(target).__name__}, expected a function of a Spec"
            )
        factory: Callable[[Spec], Any] = target
        return factory

    def check(self, spec: Spec) -> None:
        """Run the factory's ``check`` when that imports nothing new (see the module docstring)."""
        source = self.source(spec)
        ep = source.entry_point
        if ep is None:
            assert source.factory is not None
            self.run_check(spec, source, source.factory)
            return
        if not (ep.module in sys.modules or ep.module.partition(".")[0] == "deepprune_lc"):
            return  # its module would have to be imported (an engine, maybe): checked on creation
        try:
            factory = self.load(spec, source)
        except Exception:
            return  # a registration that cannot load: creating says so, with the whole story
        self.run_check(spec, source, factory)

    def run_check(self, spec: Spec, source: _Source, factory: Callable[[Spec], Any]) -> None:
        check = getattr(factory, "check", None)
        if not callable(check):
            return
        try:
            check(spec)
        except Exception as exc:
            if sys.version_info >= (3, 11):
                exc.add_note(
                    f"raised while checking {self.what} {spec.raw!r} with the check of kind "
                    f"{spec.kind!r} ({source.describe()})"
                )
            raise

    def create(self, spec: Spec) -> Any:
        """A new instance for the spec: the factory's errors carry the kind and where it came from."""
        source = self.source(spec)
        factory = self.load(spec, source)
        self.run_check(spec, source, factory)
        try:
            instance = factory(spec)
        except Exception as exc:
            # The factory's own exception type is kept (callers catch ValueError, ImportError,
            # FileNotFoundError); the note says which registration raised it.
            if sys.version_info >= (3, 11):
                exc.add_note(
                    f"raised while creating {self.what} {spec.raw!r} with the factory of kind "
                    f"{spec.kind!r} ({source.describe()})"
                )
            raise
        if not isinstance(instance, self.port):
            raise TypeError(
                f"{self.what} {spec.raw!r}: the factory of kind {spec.kind!r} "
                f"({source.describe()}) returned {type(instance).__name__}, not a "
                f"{self.port.__name__}"
            )
        return instance


_BACKENDS = _Kinds("backend", BACKEND_GROUP, GenerationBackend)
_JUDGES = _Kinds("judge", JUDGE_GROUP, Judge)


def _parse(kinds: _Kinds, spec: object, example: str) -> Spec:
    """Parse and check that the kind is registered (metadata only: nothing is imported)."""
    if not isinstance(spec, str):
        raise SpecError(
            f"{kinds.what}: expected a {kinds.port.__name__} or a spec string such as {example}, "
            f"got {type(spec).__name__}"
        )
    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        raise SpecError(f"{kinds.what}: {exc}") from None
    kinds.source(parsed)
    return parsed


def _resolve(kinds: _Kinds, spec: Spec, cache: dict[str, Any]) -> Any:
    key = spec.canonical
    with _lock:
        instance = cache.get(key)
        if instance is None:
            instance = kinds.create(spec)
            cache[key] = instance
        return instance


def check_backend_spec(spec: object) -> None:
    """Validate a backend or backend spec without loading anything (constructors must stay cheap).

    Checks the grammar and that the kind is registered, and runs the factory's ``check`` where that
    imports no outside package (the core's kinds, code registrations, modules already imported:
    see the module docstring); anything else about the arg and options is the factory's to check,
    on the first ``resolve_backend``.
    """
    if isinstance(spec, GenerationBackend):
        return
    _BACKENDS.check(_parse(_BACKENDS, spec, "'replay:demo' or 'vllm:<model>'"))


def check_judge_spec(spec: object) -> None:
    """Validate a judge or judge spec without loading anything (see ``check_backend_spec``)."""
    if isinstance(spec, Judge):
        return
    _JUDGES.check(_parse(_JUDGES, spec, "'lexical' or 'vllm:<judge model>'"))


def resolve_backend(spec: GenerationBackend | str) -> GenerationBackend:
    """The backend a spec names, created on first use and shared; an object is returned as is."""
    if isinstance(spec, GenerationBackend):
        return spec
    parsed = _parse(_BACKENDS, spec, "'replay:demo' or 'vllm:<model>'")
    backend: GenerationBackend = _resolve(_BACKENDS, parsed, _backends)
    return backend


def resolve_judge(spec: Judge | str) -> Judge:
    """The judge a spec names, created on first use and shared; an object is returned as is."""
    if isinstance(spec, Judge):
        return spec
    parsed = _parse(_JUDGES, spec, "'lexical' or 'vllm:<judge model>'")
    judge: Judge = _resolve(_JUDGES, parsed, _judges)
    return judge


def spec_display_name(spec: str) -> str:
    """A spec as it may be shown off this machine (LangSmith's model name, a usage key).

    A local path in the argument is cut to its last part, the file or directory name
    (``replay:/home/me/pools/dev.jsonl`` -> ``replay:dev.jsonl``), and the options are left out
    (they are engine settings, and may hold paths too); a hub id (``vllm:Qwen/Qwen3-8B``) stays.
    A string that is no valid spec is returned as given.
    """
    try:
        parsed = parse_spec(spec)
    except SpecError:
        return spec
    arg = parsed.arg
    if arg and _is_local_path(arg):
        arg = Path(arg).name or arg
    return f"{parsed.kind}:{arg}" if arg else parsed.kind


def _is_local_path(arg: str) -> bool:
    """Whether a spec's argument names a file or directory here (not a model hub id)."""
    path = Path(arg)
    if path.is_absolute() or arg.startswith(("~", "./", "../")):
        return True
    try:
        return len(path.parts) > 1 and path.exists()
    except OSError:
        return False


def backend_kinds() -> list[str]:
    """The registered backend kinds (entry points and code), sorted; nothing is imported."""
    return _BACKENDS.kinds()


def judge_kinds() -> list[str]:
    """The registered judge kinds (entry points and code), sorted; nothing is imported."""
    return _JUDGES.kinds()


def _register(kinds: _Kinds, cache: dict[str, Any], kind: str, factory: Any, replace: bool) -> None:
    Spec(kind)  # a kind must be a name the grammar can parse back
    if not callable(factory):
        raise TypeError(f"register_{kinds.what}: factory for {kind!r} is not callable")
    with _lock:
        if not replace and kind in kinds.kinds():
            if kinds.registered.get(kind) is factory:
                return
            raise ValueError(
                f"register_{kinds.what}: kind {kind!r} is already registered; pass replace=True "
                "to override it"
            )
        kinds.registered[kind] = factory
        _drop_instances(cache, kind)


def _unregister(kinds: _Kinds, cache: dict[str, Any], kind: str) -> None:
    with _lock:
        if kinds.registered.pop(kind, None) is None:
            raise KeyError(f"unregister_{kinds.what}: {kind!r} was not registered in code")
        _drop_instances(cache, kind)


def _drop_instances(cache: dict[str, Any], kind: str) -> None:
    """Forget shared instances of a kind whose factory changed (they came from the old one)."""
    for key in [key for key in cache if parse_spec(key).kind == kind]:
        del cache[key]


def register_backend(kind: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Register a backend kind from code (no package needed): ``factory(spec) -> backend``.

    An already registered kind (entry point or code) is an error unless ``replace=True``, which
    makes this factory win over an entry point of the same name. Registering the same function
    again is a no-op (re-running a notebook cell).
    """
    _register(_BACKENDS, _backends, kind, factory, replace)


def register_judge(kind: str, factory: JudgeFactory, *, replace: bool = False) -> None:
    """Register a judge kind from code: ``factory(spec) -> judge`` (see ``register_backend``)."""
    _register(_JUDGES, _judges, kind, factory, replace)


def unregister_backend(kind: str) -> None:
    """Remove a backend kind registered in code, and its shared instances."""
    _unregister(_BACKENDS, _backends, kind)


def unregister_judge(kind: str) -> None:
    """Remove a judge kind registered in code, and its shared instances."""
    _unregister(_JUDGES, _judges, kind)


def refresh_plugins() -> None:
    """List the entry points again (after installing a package, or changing ``sys.path``).

    Shared instances stay: a spec already resolved keeps its instance.
    """
    _BACKENDS.forget_entry_points()
    _JUDGES.forget_entry_points()
