"""What every benchmark prints beside its figures: the hardware they were measured on."""

from __future__ import annotations

import os
import platform

import torch


def hardware() -> dict:
    """What the figures were measured on."""
    info = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
