"""The architecture facts the computation graph needs, with no dependency on how models load.

:class:`ModelShape` lives here (not in :mod:`kc_utils.models`) so that the graph and everything
built on it can describe a model without importing the model door; :func:`kc_utils.models.model_shape`
reads it off a booted model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ModelShape"]


@dataclass(frozen=True)
class ModelShape:
    """The architecture facts the computation graph needs.

    Attributes:
        n_layers: number of transformer blocks.
        n_heads: query heads per layer.
        n_kv_heads: key/value heads per layer (``< n_heads`` under grouped-query attention).
        d_model: width of the residual stream.
        parallel_attn_mlp: attention and MLP read the same residual stream (GPT-J/NeoX style).
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    parallel_attn_mlp: bool = False

    @property
    def heads_per_kv(self) -> int:
        """Query heads that share one key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def grouped(self) -> bool:
        """Whether key/value heads are shared (grouped-query attention)."""
        return self.n_kv_heads != self.n_heads

    @classmethod
    def from_config(cls, cfg: Any) -> ModelShape:
        """Read the shape off a TransformerLens-style config (``n_layers``, ``n_heads``, ``d_model`` …)."""
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return cls(
            n_layers=int(cfg.n_layers),
            n_heads=int(cfg.n_heads),
            n_kv_heads=int(n_kv),
            d_model=int(cfg.d_model),
            parallel_attn_mlp=bool(getattr(cfg, "parallel_attn_mlp", False)),
        )
