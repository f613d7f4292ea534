"""Stores: where selected studies go, one module per kind behind `base.Store`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from .base import Store


def open_store(cfg: "Config") -> "Store":
    """Build the store named by `[store].kind`; imports lazily."""
    kind = cfg.store.kind
    if kind == "lake":
        from .lake import LakeStore

        return LakeStore(cfg.store.lake.path)
    if kind == "xnat":
        from .xnat import XnatStore

        return XnatStore.from_config(cfg)
    if kind == "xnat-dqr":
        from .xnat_dqr import XnatDqrStore

        return XnatDqrStore.from_config(cfg)
    if kind == "orthanc":
        from .orthanc import OrthancStore

        return OrthancStore.from_config(cfg)
    raise ValueError(f"unknown store kind {kind!r}")
