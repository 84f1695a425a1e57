"""`python -m vdisk_tool.cli` runs the vdisk command."""
from .app import main

main()
