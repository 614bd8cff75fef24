"""Offline tool: build one read-only root filesystem per language, always through a tarball.

Run it as ``python -m rootfs_builder build|import|show``; the service only imports
``rootfs_builder.store`` (``find_rootfs``, ``list_rootfs``) and ``rootfs_builder.errors``.
"""

# Bump when a change to the builder changes the trees it produces: every recipe is then rebuilt.
BUILDER_VERSION = 2
