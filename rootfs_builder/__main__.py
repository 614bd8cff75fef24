"""`python -m rootfs_builder`: see rootfs_builder.cli."""

from .cli import main

raise SystemExit(main())
