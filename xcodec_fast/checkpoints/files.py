"""Where a checkpoint's files are: a local directory or a hub repository (cache first, offline as
huggingface_hub reads HF_HUB_OFFLINE), and reading them (safetensors only, never pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import Tensor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def read_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """All tensors of one safetensors file (CPU); a truncated or corrupt file is a CheckpointError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except PermissionError as exc:
        raise CheckpointError(f"{path}: permission denied, cannot read the model's weights (check the file's "
                              "permissions)") from exc
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from exc


def read_weights(files: list[Path]) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for file in files:
        for key, value in read_safetensors(file).items():
            if key in tensors:
                raise CheckpointError(f"{file}: tensor {key!r} also appears in another shard")
            tensors[key] = value
    return tensors


def _shard_names(index_file: Path) -> list[str]:
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_file} is not a valid safetensors index ({exc})") from exc
    return sorted(set(weight_map.values()))


def _local_files(directory: Path) -> tuple[Path, list[Path]]:
    config = directory / CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
    if (directory / WEIGHTS_NAME).is_file():
        return config, [directory / WEIGHTS_NAME]
    if (directory / WEIGHTS_INDEX_NAME).is_file():
        return config, [directory / name for name in _shard_names(directory / WEIGHTS_INDEX_NAME)]
    pickled = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt*")]
    hint = f" (found {', '.join(pickled)}: pickle files are never loaded; convert them to safetensors)" if pickled else ""
    raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}{hint}")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as huggingface_hub reads it, with its own true values,
    read now rather than at import (huggingface_hub.constants.HF_HUB_OFFLINE is frozen at import)."""
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.strip().upper() in ENV_VARS_TRUE_VALUES


def _hub_files(repo_id: str, revision, cache_dir, local_files_only: bool) -> tuple[Path, list[Path]]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = local_files_only or hub_offline()

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir, local_files_only=offline))

    try:
        config = fetch(CONFIG_NAME)
        try:
            return config, [fetch(WEIGHTS_NAME)]
        except EntryNotFoundError:
            try:
                index = fetch(WEIGHTS_INDEX_NAME)
            except EntryNotFoundError:
                raise FileNotFoundError(
                    f"{repo_id} has no {WEIGHTS_NAME} (xcodec_fast loads safetensors only, never pickle)"
                ) from None
            return config, [fetch(name) for name in _shard_names(index)]
    except LocalEntryNotFoundError as exc:
        if local_files_only:
            why = "local_files_only=True"
        else:
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached"
        raise OSError(
            f"{repo_id!r} is not in the local Hugging Face cache and {why}; download it once while online, "
            f"or pass a local directory ({exc})"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise OSError(f"{repo_id!r} is neither a local directory nor a hub repository you can access") from exc
    except RevisionNotFoundError as exc:
        raise OSError(f"{repo_id!r} has no revision {revision!r}") from exc
    except HFValidationError as exc:
        raise OSError(f"{repo_id!r} is neither a local directory nor a valid hub repository id ({exc})") from exc


def resolve_files(name_or_path, revision=None, cache_dir=None, local_files_only=False) -> tuple[Path, list[Path]]:
    """(config.json, [safetensors files]) for a local directory or a hub id."""
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return _local_files(path)
    if path.is_file():
        raise ValueError(f"{name} is a file; pass the directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"no such directory: {name}")
    return _hub_files(name, revision, cache_dir, local_files_only)
