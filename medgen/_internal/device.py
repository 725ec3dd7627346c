"""Device resolution shared by training and inference: the device is a parameter, not a branch."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from medgen.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available (``cuda:LOCAL_RANK`` under a multi-process launcher
    such as ``torchrun``), else CPU; otherwise ``torch.device(device)``.

    Raises:
        ConfigError: ``device`` is not a torch device string.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
        return torch.device("cuda")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(
            f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'."
        ) from err
