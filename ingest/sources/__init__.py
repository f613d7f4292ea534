"""PACS sources: one module per protocol behind `base.Source`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from .base import Source


def open_source(cfg: "Config") -> "Source":
    """Build the source named by `[source].kind`; imports lazily so unused protocols cost nothing."""
    kind = cfg.source.kind
    if kind == "folder":
        from .folder import FolderSource

        return FolderSource(cfg.source.folder.path, cfg.state_dir / "folder-index.duckdb", name=cfg.source.name)
    if kind == "orthanc":
        from .orthanc import OrthancSource

        return OrthancSource.from_config(cfg)
    if kind == "dicomweb":
        from .dicomweb import DicomWebSource

        return DicomWebSource.from_config(cfg)
    if kind == "dimse":
        from .dimse import DimseSource

        return DimseSource.from_config(cfg)
    raise ValueError(f"unknown source kind {kind!r}")
