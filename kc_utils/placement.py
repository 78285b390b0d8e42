"""Device placement: a model's blocks spread over the GPUs of one machine (``load_model(..., device_map=...)``).

A device map assigns each *placement unit* of a Hugging Face model to a device, in the names
``from_pretrained(device_map=...)`` (``accelerate``) understands. The units are the model's transformer
blocks (its ``_no_split_modules``, never split over two devices) and the modules outside them (embeddings,
final norm, unembedding), in forward order. :func:`plan_device_map` gives each device a contiguous run of
units, balanced by bytes and within each device's budget; weights tied to an earlier unit (GPT-2's
unembedding is its token embedding) stay on that unit's device.

The edge engine (:mod:`kc_utils.circuits.patching`, :mod:`kc_utils.circuits.attribute`) keeps its
``[up, b, p, d]`` buffers on the device of the tokens (where the embeddings live); what crosses devices is
the small operand — each receiver's correction is formed there and moved to the receiver's activation, and
each layer's gradients are moved to the buffers — so the per-edge work never leaves one device.

What has run where: the planner and a CPU-only device map dispatched through accelerate (the engine's
results equal the plain model's) are tested on CPU (``tests/test_placement.py``); a split over two real
GPUs has not been run in this project.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "PlacementError",
    "PlacementUnit",
    "auto_device_map",
    "check_device_map",
    "parse_memory",
    "placement_units",
    "plan_device_map",
]

Device = int | str


class PlacementError(ValueError):
    """A device map that cannot hold the model, or that leaves part of it unplaced."""


@dataclass(frozen=True)
class PlacementUnit:
    """One module placed as a whole.

    Attributes:
        name: its name in the model (``transformer.h.3``), as a device map key.
        n_bytes: bytes of its own parameters and buffers (tied weights counted once, at the first unit).
        tied_to: the earlier unit whose weights this one shares (placed with it), else ``None``.
    """

    name: str
    n_bytes: int
    tied_to: str | None = None


def parse_memory(value: int | str) -> int:
    """``"20GiB"``, ``"500MB"``, ``"2GB"`` or a byte count → bytes.

    Raises:
        PlacementError: a value that is neither.
    """
    if isinstance(value, int):
        return value
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9}
    text = str(value).strip().upper()
    for suffix, factor in units.items():
        if text.endswith(suffix):
            try:
                return int(float(text[: -len(suffix)]) * factor)
            except ValueError:
                break
    if text.isdigit():
        return int(text)
    raise PlacementError(f"memory budget {value!r} is not a byte count or a size such as '20GiB' or '500MB'")


def placement_units(hf_model: torch.nn.Module) -> list[PlacementUnit]:
    """The model's placement units in forward (registration) order; works on a meta-device model too."""
    block_classes = set(getattr(hf_model, "_no_split_modules", None) or ())
    if not block_classes:
        raise PlacementError(f"{type(hf_model).__name__} names no _no_split_modules: its blocks are unknown")
    blocks = [name for name, module in hf_model.named_modules() if type(module).__name__ in block_classes]
    owner: dict[int, str] = {}
    units: list[PlacementUnit] = []

    def visit(name: str, module: torch.nn.Module) -> None:
        holds_block = any(b == name or b.startswith(f"{name}.") or name == "" for b in blocks)
        if name in blocks or not holds_block:
            n_bytes, tied_to = 0, None
            for _, tensor in [*module.named_parameters(remove_duplicate=False), *module.named_buffers()]:
                first = owner.setdefault(id(tensor), name)
                if first == name:
                    n_bytes += tensor.numel() * tensor.element_size()
                else:
                    tied_to = first
            units.append(PlacementUnit(name, n_bytes, tied_to))
            return
        for child, sub in module.named_children():
            visit(f"{name}.{child}" if name else child, sub)

    visit("", hf_model)
    return units


def plan_device_map(
    units: Sequence[PlacementUnit],
    devices: Sequence[Device],
    max_memory: Mapping[Device, int | str] | None = None,
) -> dict[str, Device]:
    """Contiguous runs of units per device, in order, balanced by bytes and within each device's budget.

    Args:
        units: from :func:`placement_units`.
        devices: the devices in the order the forward pass visits them (``[0, 1]`` for two GPUs).
        max_memory: a budget per device (bytes or ``"20GiB"``); without one, each device takes about an
            equal share of the bytes.

    Returns:
        ``{unit name: device}`` for every unit.

    Raises:
        PlacementError: no devices, a budget for an unknown device, or units that do not fit.
    """
    if not devices:
        raise PlacementError("no device to place the model on")
    budgets = {d: parse_memory(v) for d, v in (max_memory or {}).items()}
    unknown = sorted(map(str, set(budgets) - set(devices)))
    if unknown:
        raise PlacementError(f"max_memory names device(s) {unknown} that are not among {list(devices)}")
    total = sum(u.n_bytes for u in units)
    share = -(-total // len(devices))
    placed: dict[str, Device] = {}
    used = dict.fromkeys(devices, 0)
    index = 0
    for unit in units:
        if unit.tied_to is not None:
            placed[unit.name] = placed[unit.tied_to]
            continue
        while True:
            device, last = devices[index], index == len(devices) - 1
            if device in budgets:  # a hard budget: the unit fits whole or goes to the next device
                if used[device] + unit.n_bytes <= budgets[device]:
                    break
                if last:
                    raise PlacementError(
                        f"{unit.name} ({unit.n_bytes / 2**20:.2f} MiB) does not fit: device {device!r} would need "
                        f"{(used[device] + unit.n_bytes) / 2**20:.2f} MiB of its {budgets[device] / 2**20:.2f} MiB; "
                        f"the model needs {total / 2**20:.2f} MiB in all. Raise max_memory or add a device"
                    )
            elif last or used[device] == 0 or used[device] + unit.n_bytes / 2 <= share:
                break  # an equal share is soft: a unit goes where it leaves the device closer to its share
            index += 1
        placed[unit.name] = device
        used[device] += unit.n_bytes
    return placed


def check_device_map(device_map: Mapping[str, Device], units: Sequence[PlacementUnit]) -> dict[str, Device]:
    """A hand-written device map, checked: every unit placed (by itself or by an enclosing module).

    Raises:
        PlacementError: naming the units the map leaves unplaced and the keys that name no module.
    """
    names = [u.name for u in units]

    def covered(name: str) -> bool:
        return any(key == "" or name == key or name.startswith(f"{key}.") for key in device_map)

    missing = [n for n in names if not covered(n)]
    stray = [
        k for k in device_map if k and not any(n == k or n.startswith(f"{k}.") or k.startswith(f"{n}.") for n in names)
    ]
    if missing or stray:
        raise PlacementError(
            f"the device map leaves {missing or 'nothing'} unplaced and names {stray or 'no'} unknown modules; "
            f"its keys must cover the units {names}"
        )
    return dict(device_map)


def auto_device_map(
    hf_model: torch.nn.Module, max_memory: Mapping[Device, int | str] | None = None
) -> dict[str, Device]:
    """``device_map="auto"``: the units over every visible CUDA device, balanced (one GPU or none: ``{"": dev}``).

    Raises:
        PlacementError: the model does not fit in ``max_memory``.
    """
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus <= 1:
        return {"": 0 if n_gpus else "cpu"}
    return plan_device_map(placement_units(hf_model), list(range(n_gpus)), max_memory)


def meta_model(config: Any) -> torch.nn.Module:
    """A model of ``config`` on the meta device (no memory), its tied weights tied: what planning needs."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()
    return model
