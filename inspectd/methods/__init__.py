"""Feature-level anomaly detection methods behind one interface and one registry."""

from __future__ import annotations

from pathlib import Path

from inspectd.errors import BundleError, ConfigError
from inspectd.methods.base import AnomalyMethod, MethodConfig, read_bundle_config

_REGISTRY: dict[str, type[AnomalyMethod]] = {}


def register_method(cls: type[AnomalyMethod]) -> type[AnomalyMethod]:
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def method_class(name: str) -> type[AnomalyMethod]:
    _import_all()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_method(name: str, settings: dict | None = None, load_weights: bool = True) -> AnomalyMethod:
    cls = method_class(name)
    return cls(cls.Config.from_dict(settings or {}), load_weights=load_weights)


def load_method(bundle_dir: str | Path) -> AnomalyMethod:
    """Load a fitted method from a bundle after verifying every file against its manifest."""
    bundle_dir = Path(bundle_dir)
    manifest, cfg = read_bundle_config(bundle_dir)
    name = cfg.get("method")
    if name not in method_names():
        raise BundleError(f"{bundle_dir}: unknown method {name!r} in bundle")
    return method_class(name).from_bundle(bundle_dir, manifest, cfg)


def _import_all() -> None:
    # Importing the modules registers them; kept lazy so `import inspectd.methods` stays cheap.
    from inspectd.methods import cfa, cflow, dfr, padim, patchcore  # noqa: F401
