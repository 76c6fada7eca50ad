"""Backend registry and selection: the one place that decides which implementation runs an op.

Backends: ``eager`` (plain torch, the reference), ``triton`` (CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), ``native`` (C++ CPU kernels from ``kernels/``). ``auto`` picks per call:
Triton for CUDA tensors when it works, native for CPU tensors when built, else eager.

A backend may implement only some ops; the others run eagerly. A backend that was asked for by
name and cannot run at all raises :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import contextvars
import importlib
import os
from typing import Callable

import torch

from ..errors import short_error

BACKENDS = ("eager", "triton", "native")
CHOICES = BACKENDS + ("auto",)
ENV_VAR = "XCODEC_FAST_BACKEND"

# op name -> backend name -> implementation
_registry: dict[str, dict[str, Callable]] = {}
# backend name -> module that registers its ops on import and defines availability(device)
_backend_modules = {"triton": "xcodec_fast.ops.triton", "native": "xcodec_fast.ops.native"}
_loaded: dict[str, object] = {}
_load_errors: dict[str, str] = {}
# (backend, device type, device index) -> (available, reason); fixed for the life of the process
_availability: dict[tuple, tuple[bool, str]] = {}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (not installed, not built, or no device for it)."""


def _validate_choice(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(CHOICES)}")
    return name.lower()


def _initial_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto")
    try:
        return _validate_choice(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {ENV_VAR}={value!r}: {exc}") from None


_current: contextvars.ContextVar[str] = contextvars.ContextVar("xcodec_fast_backend", default=_initial_backend())
# torch.compile cannot trace ContextVar.get; compiled code reads this mirror of the latest setting
# instead (a plain global, so Dynamo guards on it and recompiles when it changes).
_compiled_setting = _current.get()


def _setting() -> str:
    if torch.compiler.is_compiling():
        return _compiled_setting
    return _current.get()


def register(op: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def wrap(fn: Callable) -> Callable:
        _registry.setdefault(op, {})[backend] = fn
        return fn

    return wrap


def _load(backend: str):
    """Import a backend's module once; return it, or None with the reason kept in _load_errors."""
    if backend == "eager" or backend in _loaded:
        return _loaded.get(backend)
    if backend in _load_errors:
        return None
    try:
        module = importlib.import_module(_backend_modules[backend])
    except Exception as exc:  # any import failure means "this backend cannot run here"
        _load_errors[backend] = short_error(exc, limit=500)  # one line: it ends up in availability's reason
        return None
    _loaded[backend] = module
    return module


def availability(backend: str, device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(can it run on ``device``, why not / what it is)."""
    backend = _validate_choice(backend)
    device = torch.device(device)
    if backend == "auto":
        chosen = resolve_auto(device)
        return True, f"auto -> {chosen}"
    if backend == "eager":
        return True, "plain PyTorch"
    key = (backend, device.type, device.index)
    if key not in _availability:
        if torch.compiler.is_compiling():
            raise BackendUnavailableError(
                f"backend {backend!r} on {device} was not set up before torch.compile; call "
                f"xcodec_fast.ops.prepare({str(device)!r}) (or run the model once) before compiling"
            )
        module = _load(backend)
        if module is None:
            _availability[key] = (False, f"{backend} backend failed to load: {_load_errors[backend]}")
        else:
            _availability[key] = module.availability(device)
    return _availability[key]


def prepare(device: torch.device | str = "cpu") -> dict[str, tuple[bool, str]]:
    """Load every backend for ``device`` now (a native build, Triton import), as torch.compile
    cannot trace loading; returns each backend's availability."""
    return {name: availability(name, device) for name in BACKENDS}


def resolve_auto(device: torch.device) -> str:
    preferred = "triton" if device.type == "cuda" else "native" if device.type == "cpu" else None
    if preferred is not None and availability(preferred, device)[0]:
        return preferred
    return "eager"


def current_backend() -> str:
    """The backend setting in force here (may be ``auto``)."""
    return _setting()


class use_backend:
    """Select the backend: ``use_backend("triton")`` sets it from now on; ``with use_backend(...)``
    sets it for the block only and restores the previous choice on exit."""

    def __init__(self, name: str):
        self.name = _validate_choice(name)
        global _compiled_setting
        self._token = _current.set(self.name)
        _compiled_setting = self.name

    def __enter__(self) -> "use_backend":
        return self

    def __exit__(self, *exc) -> None:
        global _compiled_setting
        _current.reset(self._token)
        _compiled_setting = _current.get()

    def __repr__(self) -> str:
        return f"use_backend({self.name!r})"


def implementation(op: str, device: torch.device) -> tuple[str, Callable]:
    """The (backend name, function) that runs ``op`` for tensors on ``device`` right now."""
    setting = _setting()
    backend = resolve_auto(device) if setting == "auto" else setting
    if backend != "eager":
        ok, reason = availability(backend, device)
        if not ok:
            raise BackendUnavailableError(
                f"backend {backend!r} was requested but cannot run on {device}: {reason}. "
                f"Use xcodec_fast.use_backend('auto') or 'eager'."
            )
        fn = _registry.get(op, {}).get(backend)
        if fn is not None:
            return backend, fn
    return "eager", _registry[op]["eager"]


def implemented_ops(backend: str) -> list[str]:
    _load(backend)
    return sorted(op for op, impls in _registry.items() if backend in impls)


def describe(device: torch.device | str = "cpu") -> dict[str, str]:
    """Every backend's availability on ``device``, for ``xcodec-fast info``."""
    device = torch.device(device)
    report = {}
    for name in BACKENDS:
        ok, reason = availability(name, device)
        ops = ", ".join(implemented_ops(name)) if ok else "-"
        report[name] = f"{'yes' if ok else 'no '} {reason}" + (f" [ops: {ops}]" if ok and name != "eager" else "")
    report["auto"] = resolve_auto(device)
    report["selected"] = current_backend()
    return report
