"""The VMDK backend (specs/vmdk.md): sparse extents (sparse.py), opening descriptors,
sparse files and snapshot chains as a Disk (open.py), the checks (check.py) and the
writers of every hosted subformat (create.py)."""
