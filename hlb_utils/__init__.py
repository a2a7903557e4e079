"""hlb_utils: the small library the hlb notebooks stand on.

Importing it has no side effects: no downloads, no prints, no backend flags.
Use it as `import hlb_utils as hu` and then `hu.data.load_cifar10()`, `hu.train.train(cfg, data)`...
"""
from importlib import import_module

__version__ = "0.1.0"
_MODULES = ("config", "data", "loader", "model", "optim", "evaluate", "train", "progress",
            "runs", "stats", "plots", "notebook", "device", "baseline", "cli", "imagefolder", "cluster",
            "history", "compiling", "check")


def __getattr__(name: str):
    # Submodules load on first use, so `import hlb_utils` stays cheap and side-effect free.
    if name in _MODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'hlb_utils' has no attribute {name!r}")
