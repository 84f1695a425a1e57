"""`python -m vdisk_tool.cli` runs the vdisk command."""
from .main import main

main()
