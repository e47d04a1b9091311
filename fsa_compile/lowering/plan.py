"""Strategy and tile sizes, chosen from the static shapes (placeholder until the kernels land)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

STRATEGIES = ("auto", "fsa", "nsa", "reference")


def interpret_mode() -> bool:
    return os.environ.get("FSA_COMPILE_INTERPRET", "") == "1"


def kernels_available(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and interpret_mode())


@dataclass(frozen=True)
class Plan:
    strategy: str

    def describe(self) -> str:
        return self.strategy


def choose_plan(B, T, H, G, D, Dv, n, block_size, dtype, causal, strategy, device) -> Plan:
    return Plan("reference")
