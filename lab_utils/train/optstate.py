"""Allocating the optimizer's state before the first training step, so a short measured run holds what a long one
holds from its first step on (the memory sweep's rows are two steps long)."""

from __future__ import annotations

from typing import Any


def state_allocator() -> Any:
    """A trainer callback that allocates the optimizer's state before the first step (zero gradients, learning rate
    0: no weight changes), so every measured step, the first included, holds the state a long run holds."""
    from transformers import TrainerCallback

    class AllocateOptimizerState(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
            import torch

            if optimizer is None:
                return
            params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
            lrs = [g["lr"] for g in optimizer.param_groups]
            for p in params:
                p.grad = torch.zeros_like(p)
            for g in optimizer.param_groups:
                g["lr"] = 0.0
            optimizer.step()
            for g, lr in zip(optimizer.param_groups, lrs):
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)

    return AllocateOptimizerState()
