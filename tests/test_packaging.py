"""The install paths agree: pyproject, environment.yml, README's commands and CI."""
import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda name, where they differ


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_has_every_requirement():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    for requirement in project["dependencies"]:
        name = _name(requirement)
        assert CONDA_NAMES.get(name, name) in conda, f"{name} is missing from environment.yml"
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section


def _readme_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_readme_test_command():
    test_command = next(b for b in _readme_blocks() if "pytest" in b).strip()
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_readme_quickstart_installs_cpu_torch_first_and_shows_the_offline_form():
    # Issue 15: a CPU machine should not pull CUDA wheels, and an offline user needs HLB_DATA beside the command.
    install = _readme_blocks()[0]
    assert install.index("--index-url https://download.pytorch.org/whl/cpu") < install.index("pip install -e .")
    run = "python -m hlb_utils notebook run notebooks/06_record_run.ipynb --out runs/record"
    runs = [b for b in _readme_blocks() if run in b]
    assert len(runs) == 2 and runs[1].startswith("HLB_DATA=") and not runs[0].startswith("HLB_DATA=")
    assert any(b.startswith("HLB_DATA=") and "pytest" in b for b in _readme_blocks())


def test_readme_names_the_download_folder_the_code_uses_and_every_notebook():
    from hlb_utils import data

    readme = (ROOT / "README.md").read_text()
    assert f"~/.cache/hlb_utils/{data.DOWNLOAD_FOLDER}" in readme
    for notebook in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert f"| `{notebook.stem}` |" in readme, f"README's notebook table lacks {notebook.stem}"
