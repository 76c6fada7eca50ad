"""Checkpoints: transformers X-Codec checkpoints (hub or local, safetensors only) loaded and saved
back in the layout transformers reads, original X-Codec ``.pth`` files, and random weights.

Weight norm is folded into plain ``weight`` tensors at load (either spelling: ``weight_g/weight_v``
or ``parametrizations.weight.original0/original1``). Keys are checked strictly: the only keys that
may be left over are training-only buffers listed in :data:`state_dict.IGNORED_SUFFIXES`.

files.py (where the files are, reading them) -> weight_norm.py -> state_dict.py (onto the model and
back) -> original.py; random_init.py stands alone.
"""

from .files import CheckpointError, hub_offline, read_safetensors, resolve_files
from .original import config_from_original_yaml, load_original_checkpoint, original_key_to_transformers
from .random_init import randomize_
from .state_dict import build_model, convert_state_dict, load_pretrained, save_pretrained, transformers_state_dict
from .weight_norm import fold_weight_norm, unfold_weight_norm

__all__ = [
    "CheckpointError",
    "build_model",
    "config_from_original_yaml",
    "convert_state_dict",
    "fold_weight_norm",
    "hub_offline",
    "load_original_checkpoint",
    "load_pretrained",
    "original_key_to_transformers",
    "randomize_",
    "read_safetensors",
    "resolve_files",
    "save_pretrained",
    "transformers_state_dict",
    "unfold_weight_norm",
]
