"""vdisk: inspect and repair the virtual disks of the innovaphone Virtual Appliance."""
from __future__ import annotations

__version__ = "0.1.0"
