"""`python -m vdisk_tool` runs the vdisk command."""
from .cli.main import main

main()
