"""`python -m vdisk_tool` runs the vdisk command."""
from .cli.app import main

main()
