"""Small framework-agnostic helpers: `EasyDict`, cached downloads, building objects by name."""

from .util import EasyDict, make_cache_dir_path  # noqa: F401
