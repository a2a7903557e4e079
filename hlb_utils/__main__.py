"""The one command line: `python -m hlb_utils train ...` and `python -m hlb_utils notebook run ...`.

README's commands go through here. `train` is the headless trainer of `hlb_utils.cli` (profiles, several
seeds, run records); `notebook` runs a notebook of the series headless (`hlb_utils.notebook`).
"""
from __future__ import annotations

import sys

USAGE = """usage: python -m hlb_utils COMMAND [ARGS]

commands:
  train      train a profile and write its run records, e.g.
             python -m hlb_utils train --profile quick --runs 2 --out runs/quick
  notebook   run a notebook of the series headless, e.g.
             python -m hlb_utils notebook run notebooks/06_record_run.ipynb --out runs/record
             python -m hlb_utils notebook docs [NN ...]   (executed copies and figures into docs/)

`python -m hlb_utils COMMAND --help` lists a command's options."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command named by the first argument; usage and exit status 2 when it is unknown."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command == "train":
        from hlb_utils import cli

        return cli.main(rest)
    if command == "notebook" and rest[:1] == ["docs"]:
        from hlb_utils import docs

        return docs.main(rest[1:])
    if command == "notebook":
        from hlb_utils import notebook

        return notebook.main(rest)
    if command in ("-h", "--help"):
        print(USAGE)
        return 0
    print(USAGE if command is None else f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
