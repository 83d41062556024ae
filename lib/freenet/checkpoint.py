"""Checkpoint files: atomic writes and model weights from any of the layouts in use (SPEC §9, §11.9)."""
from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from freenet.fileio import write_atomic

# Where a checkpoint may keep the weights, in search order (SPEC §11.9); "" = the raw dict.
MODEL_KEYS = ("teacher_model", "student_model", "state_dict", "model")
RAW_DICT = "(raw dict)"   # where the weights are when the file holds them alone


class CheckpointError(ValueError):
    """A checkpoint cannot be used for this model; the message names the file and says why."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    A crash or Ctrl-C mid-write leaves the previous file intact (SPEC §9).
    """
    write_atomic(path, lambda f: torch.save(obj, f), mode="wb")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for corrupt files; name the file once
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _contents(checkpoint, shown: int = 10) -> str:
    """What a checkpoint holds, in a few words: a raw state_dict has a key per tensor, none worth listing."""
    if _is_state_dict(checkpoint):
        return "the file holds the model weights alone, a state_dict: leave out the key"
    if not isinstance(checkpoint, Mapping):
        return f"it holds a {type(checkpoint).__name__}, not a dict"
    keys = [str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not keys:
        return "it is empty"
    more = f", ... and {len(keys) - shown} more" if len(keys) > shown else ""
    return "it has: " + ", ".join(keys[:shown]) + more


def extract_state_dict(checkpoint, key: str = "", path: str = "<checkpoint>") -> tuple[dict, str]:
    """The model weights inside ``checkpoint`` and the key they were found under.

    ``key`` picks one explicitly (``TEST.MODEL_KEY``); otherwise the keys of :data:`MODEL_KEYS`
    are tried in order, then the raw dict. A ``module.`` prefix (DataParallel/DDP) is removed.
    """
    if key:
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            raise CheckpointError(f"{path}: no key '{key}' in the checkpoint ({_contents(checkpoint)})")
        found, where = checkpoint[key], key
    else:
        found, where = None, ""
        for k in MODEL_KEYS:
            if isinstance(checkpoint, Mapping) and _is_state_dict(checkpoint.get(k)):
                found, where = checkpoint[k], k
                break
        if found is None:
            found, where = checkpoint, RAW_DICT
    if not _is_state_dict(found):
        raise CheckpointError(f"{path}: '{where}' does not hold model weights (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in found.items()}, where


def load_model_weights(model: nn.Module, path: str | os.PathLike, key: str = "", checkpoint=None) -> str:
    """Strictly load weights from ``path`` (or from ``checkpoint``, that file already read) into
    ``model``; returns the key used.

    A joint-count or layout mismatch becomes a one-line :class:`CheckpointError` instead of a
    wall of missing/unexpected keys.
    """
    state, where = extract_state_dict(load_checkpoint(path) if checkpoint is None else checkpoint, key, str(path))
    check_compatible(model, state, str(path))
    model.load_state_dict(state)
    return where


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    final = state.get("final_layer.weight")
    if final is not None and "final_layer.weight" in own and final.shape[0] != own["final_layer.weight"].shape[0]:
        raise CheckpointError(
            f"{path}: checkpoint predicts {final.shape[0]} joints "
            f"but the model has {own['final_layer.weight'].shape[0]} "
            f"(pick the matching --cfg / MODEL.NUM_JOINTS, or the right checkpoint)")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shape:
            k = shape[0]
            parts.append(f"{len(shape)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}; "
                         f"a different MODEL.WIDTH?)")
        raise CheckpointError(f"{path}: weights do not fit the model: " + "; ".join(parts))
