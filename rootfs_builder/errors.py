"""The exception tree of the rootfs builder.

    RootfsError                 every failure of the tool; also "no usable rootfs installed"
    ├── RecipeError             recipe missing, unreadable or malformed
    ├── BuildError              a step (mmdebstrap, npm, chroot, file system) failed or timed out
    └── TarballRejectedError    unreadable or unsafe tarball, or no working interpreter in it

Messages read "verb object: detail" and fit on one line; the CLI prints them as they are.
"""


class RootfsError(Exception):
    """Base of every error raised by rootfs_builder."""


class RecipeError(RootfsError):
    """A recipe directory or its recipe.toml is missing or invalid."""


class BuildError(RootfsError):
    """A build step failed: a command exited non-zero or timed out, or a path was unusable."""


class TarballRejectedError(RootfsError):
    """A tarball was refused: unreadable, unsafe member, or the interpreter is missing or broken."""
