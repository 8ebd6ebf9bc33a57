"""The operations kinds: maintenance, HA settings, ADS, the CVM."""

from __future__ import annotations

from typing import Any

from ahvlite.controller.kinds import ads, cvm, ha, maintenance
from ahvlite.controller.kinds.base import Kind

KINDS: tuple[type[Kind[Any]], ...] = (*maintenance.KINDS, *ha.KINDS, *ads.KINDS, *cvm.KINDS)
