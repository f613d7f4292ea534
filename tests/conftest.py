"""Shared test set-up: every module in tests/fixtures/ is loaded as a pytest plugin, so each
area (PACS servers, XNAT emulator, demo cohort...) keeps its fixtures in its own file."""

import pkgutil
from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{m.name}" for m in pkgutil.iter_modules([str(Path(__file__).parent / "fixtures")])
)
