"""hlb_utils: the small library the hlb notebooks stand on.

Importing it has no side effects: no downloads, no prints, no backend flags.
Use it as `import hlb_utils as hu` and then `hu.data.load_cifar10()`, `hu.train.train(cfg, data)`...

A map. The training path, in reading order:
    config      every knob of a run (`TrainConfig`), the profiles, the knobs' allowed values
    data        CIFAR-10 as four uint8 tensors, decoded once and cached (dataset.py: the type and its
                error; imagefolder.py: reading and checking an ImageFolder source)
    loader      batches straight from device memory, with the augmentations done on the device
    model       the networks, built from small blocks, and the patch whitening
    optim       parameter groups, the lr schedule, Muon, the weight average (EMA), the loss
    train       `train(cfg, data)`: one run, and `train_loop`, the loop on one screen
    evaluate    the test evaluation, with and without test-time augmentation
Beside it: device (device, precision, memory format, the clock), compiling (torch.compile, its
warm-up and fallback), history (the loop's bookkeeping: history rows, NaN checks, Ctrl-C), progress
(the live epoch table).

The tools around it:
    runs        many seeds, their statistics, the run records on disk (failures.py: a failed run)
    records     writing the records safely: atomic files, one series per folder, older series kept
    cli         the command line: `python -m hlb_utils train ...` (__main__.py dispatches; changes.py
                reads `--set` values by their fields' types)
    cluster     the same runs spread over a Ray cluster
    notebook    notebook set-up, `show_source`, the headless notebook runner (`... notebook run`)
    docs        the executed copies in docs/notebooks and README's figures (`... notebook docs`)
    sizes       what each notebook shortens on a CPU (`notebook_size`)
    plots       the notebooks' figures
    check       a learner's sketch against the library, in one line that never stops a notebook
    stats       Student's t (scipy.stats): the runs' intervals, paired differences over seeds
    compare     settings compared over paired seeds, and epochs to a target accuracy
    baseline    the conventional baseline of notebook 02 (torchvision DataLoader, plain SGD)
"""
from importlib import import_module

__version__ = "0.1.0"
_MODULES = ("config", "data", "loader", "model", "optim", "evaluate", "train", "progress",
            "runs", "stats", "plots", "notebook", "device", "baseline", "cli", "imagefolder", "cluster",
            "history", "compiling", "compare", "dataset", "failures", "sizes", "records", "changes", "check")


def __getattr__(name: str):
    # Submodules load on first use, so `import hlb_utils` stays cheap and side-effect free.
    if name in _MODULES:
        return import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'hlb_utils' has no attribute {name!r}")
