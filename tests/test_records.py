"""Run records that never lie: cut-short runs are marked and never counted, runs at chance level
say so, each record names its code, and the heads take their size from the data's classes."""
import json
import math
import subprocess

import pandas as pd
import pytest
import torch

import hlb_utils
from hlb_utils import loader, runs, train
from hlb_utils.config import get_profile
from hlb_utils.model import make_net
from hlb_utils.optim import smoothed_cross_entropy

from synthetic import synthetic_dataset

TINY = dict(widths=(8, 16, 16), batch_size=100, epochs=2, tta="flip", eval_every=1, whiten_bias_epochs=1.0)


def tiny_cfg(**changes):
    return get_profile("quick", **{**TINY, **changes})


def interrupt_epoch(monkeypatch, at_call: int) -> None:
    """Ctrl-C arrives at the start of the `at_call`-th training epoch of the series (counted from 1),
    while the training loader plans it."""
    calls, original = {"n": 0}, loader.DeviceLoader.__iter__

    def epoch(self):
        calls["n"] += self.train
        if self.train and calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(loader.DeviceLoader, "__iter__", epoch)


def read_records(out):
    return json.loads((out / "summary.json").read_text()), pd.read_csv(out / "runs.csv")


def test_run_cut_after_one_epoch_is_recorded_but_never_counted(synthetic, tmp_path, monkeypatch):
    # 2 epochs per run: calls 1-2 are run 1, call 3 is run 2's first epoch, call 4 its second.
    interrupt_epoch(monkeypatch, at_call=4)
    result = runs.run_many(tiny_cfg(), synthetic, runs=3, target=0.5, verbose=False)
    first, cut = result.results
    assert not first.interrupted and cut.interrupted and len(cut.history) == 1
    assert not math.isnan(cut.test_accuracy)   # the partly trained net was evaluated ...
    assert result.accuracies == [first.test_accuracy]   # ... but is not in the statistics
    summary, table = read_records(runs.write_records(result, tmp_path / "rec", data_source="synthetic"))
    assert list(table["status"]) == ["finished", "interrupted"]
    assert table["test_accuracy"].iloc[1] == pytest.approx(cut.test_accuracy)
    assert summary["test_accuracy"] == pytest.approx(first.test_accuracy)
    assert summary["accuracies"] == [pytest.approx(first.test_accuracy)]
    assert summary["test_accuracy_std"] is None and summary["ci95"] == [None, None]
    assert summary["train_seconds_all"] == [pytest.approx(first.train_seconds)]
    assert (summary["runs_requested"], summary["runs_finished"], summary["runs_interrupted"]) == (3, 1, 1)
    assert summary["runs"] == 1 and summary["interrupted"] is True


def test_run_cut_in_its_first_epoch_keeps_the_headline_of_the_finished_ones(synthetic, tmp_path, monkeypatch):
    interrupt_epoch(monkeypatch, at_call=3)
    result = runs.run_many(tiny_cfg(), synthetic, runs=3, verbose=False)
    assert math.isnan(result.results[1].test_accuracy)
    summary, table = read_records(runs.write_records(result, tmp_path / "rec"))
    assert summary["test_accuracy"] == pytest.approx(result.results[0].test_accuracy)
    assert list(table["status"]) == ["finished", "interrupted"]


def test_series_with_no_finished_run_has_no_headline(synthetic, tmp_path, monkeypatch):
    interrupt_epoch(monkeypatch, at_call=2)
    result = runs.run_many(tiny_cfg(), synthetic, runs=2, verbose=False)
    summary, table = read_records(runs.write_records(result, tmp_path / "rec"))
    assert summary["test_accuracy"] is None and summary["accuracies"] == []
    assert (summary["runs_requested"], summary["runs_finished"], summary["runs_interrupted"]) == (2, 0, 1)
    assert list(table["status"]) == ["interrupted"]


def test_run_stopped_in_its_final_evaluation_keeps_its_epochs(synthetic, tmp_path, monkeypatch):
    # Ctrl-C during run 2's test-time augmentation: the run comes back interrupted, with its history. Run 2
    # trains a net of ours (run_many's train_fn, train's model) whose forward hook raises at its third call
    # in eval mode: one evaluation after each of its 2 epochs (one batch each), then the final one with TTA.
    cfg = tiny_cfg()
    assert (cfg.epochs, cfg.eval_every, cfg.tta) == (2, 1, "flip") and len(synthetic.test_labels) <= 250

    def train_fn(run_cfg, data, **kwargs):
        net = make_net(run_cfg)
        if run_cfg.seed == cfg.seed + 1:
            evaluations = []

            def stop_in_the_final_evaluation(module, args):
                evaluations.append(module.training)
                if evaluations.count(False) == 3:
                    raise KeyboardInterrupt

            net.register_forward_pre_hook(stop_in_the_final_evaluation)
        return train.train(run_cfg, data, model=net, **kwargs)

    saved = []
    result = runs.run_many(cfg, synthetic, runs=3, verbose=False, on_run=saved.append, train_fn=train_fn)
    assert len(result.results) == 2 and result.counts == dict(runs_requested=3, runs_finished=1,
                                                                runs_interrupted=1, runs_failed=0)
    cut = result.results[1]
    assert cut.interrupted and math.isnan(cut.test_accuracy) and len(cut.history) == 2
    assert saved[-1].counts["runs_interrupted"] == 1   # the records written last say so too
    runs.write_records(saved[-1], tmp_path / "rec")
    history = pd.read_csv(tmp_path / "rec" / "history.csv")
    assert history.groupby("run").size().to_dict() == {0: 2, 1: 2}   # both runs' finished epochs


def test_run_diverging_in_the_middle_of_a_series_is_recorded_as_failed(synthetic, tmp_path):
    # run 2 (seed 1) turns NaN at its step 3, through train()'s own loss_fn seam; runs 1 and 3 train as usual
    steps = {"n": 0}

    def train_fn(cfg, data, verbose=False):
        def nan_at_3(logits, y):
            steps["n"] += 1
            out = smoothed_cross_entropy(logits, y, smoothing=cfg.label_smoothing, reduction="sum")
            return out * float("nan") if steps["n"] == 4 else out

        return train.train(cfg, data, verbose=verbose, loss_fn=nan_at_3 if cfg.seed == 1 else None)

    result = runs.run_many(tiny_cfg(), synthetic, runs=3, verbose=False, train_fn=train_fn)
    assert result.counts == dict(runs_requested=3, runs_finished=2, runs_interrupted=0, runs_failed=1)
    summary, table = read_records(runs.write_records(result, tmp_path / "rec"))
    assert table["status"].tolist() == ["finished", "failed", "finished"]
    assert "the loss became nan at step 3" in table["error"].iloc[1]
    assert summary["runs_failed"] == 1 and len(summary["accuracies"]) == 2


def test_records_name_the_code_they_came_from(synthetic, tmp_path, monkeypatch):
    result = runs.run_many(tiny_cfg(epochs=1), synthetic, runs=1, verbose=False)
    summary, _ = read_records(runs.write_records(result, tmp_path / "rec"))
    root = runs.Path(runs.__file__).resolve().parent.parent
    if (root / ".git").exists():
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert summary["code_version"] in (f"{hlb_utils.__version__}+g{sha}", f"{hlb_utils.__version__}+g{sha}.dirty")
    # outside a checkout (an installed package), or without git, the package version ...
    monkeypatch.setattr(runs, "__file__", str(tmp_path / "site-packages" / "hlb_utils" / "runs.py"))
    monkeypatch.setattr(runs, "_installed_commit", lambda: None)
    assert runs.code_version() == hlb_utils.__version__

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(runs, "__file__", str(root / "hlb_utils" / "runs.py"))
    monkeypatch.setattr(runs.subprocess, "run", no_git)
    assert runs.code_version() == hlb_utils.__version__


def test_a_copy_pip_installed_from_git_records_its_commit(monkeypatch, tmp_path):
    from importlib import metadata

    class Dist:
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps({"url": "https://github.com/hlb-notebooks/hlb-notebooks",
                               "vcs_info": {"vcs": "git", "commit_id": "0123456789abcdef0123456789abcdef01234567"}})

    monkeypatch.setattr(runs, "__file__", str(tmp_path / "site-packages" / "hlb_utils" / "runs.py"))
    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    assert runs.code_version() == f"{hlb_utils.__version__}+g0123456789ab"

    class FromFolder(Dist):   # pip install PATH: no commit recorded
        def read_text(self, name):
            return json.dumps({"url": "file:///src/hlb", "dir_info": {}})

    monkeypatch.setattr(metadata, "distribution", lambda name: FromFolder())
    assert runs.code_version() == hlb_utils.__version__


def test_chance_level_is_three_standard_errors_above_guessing():
    assert train.at_chance(0.1, 10, 10_000) and train.at_chance(0.108, 10, 10_000)
    assert not train.at_chance(0.11, 10, 10_000)   # 3 standard errors: 0.009 at 10,000 images
    assert train.at_chance(0.16, 10, 200) and not train.at_chance(0.17, 10, 200)
    assert not train.at_chance(math.nan, 10, 200)


class Constant(torch.nn.Module):
    """Predicts class 0 for every image: exactly chance on balanced data."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(10))

    def forward(self, x):
        return self.bias.expand(len(x), 10) * 0


def test_run_at_chance_says_so_in_its_final_line_and_record(synthetic, tmp_path, capsys):
    res = train.train(tiny_cfg(optimizer="sgd"), synthetic, model=Constant(), verbose=True)
    assert res.test_accuracy == pytest.approx(0.1) and res.at_chance
    assert "chance level for 10 classes" in capsys.readouterr().out.strip().splitlines()[-1]
    summary, table = read_records(runs.write_records(res, tmp_path / "rec"))
    assert summary["runs_at_chance"] == 1 and table["at_chance"].tolist() == [True]
    learned = train.train(tiny_cfg(epochs=3), synthetic, verbose=False)
    assert learned.test_accuracy > 0.3 and not learned.at_chance


@pytest.mark.parametrize("net", ["record", "seed"])
def test_heads_take_their_size_from_the_data(net):
    # A learner's own folder may hold any number of classes: 12 here, labels 0..11.
    base = synthetic_dataset(n_train=600, n_test=120, seed=1)
    twelve = base._replace(train_labels=torch.arange(600) % 12, test_labels=torch.arange(120) % 12,
                           classes=[f"class{i}" for i in range(12)])
    widths = (8, 16, 16) if net == "record" else (8, 16, 16, 16)
    res = train.train(tiny_cfg(net=net, widths=widths, epochs=1), twelve, verbose=False)
    assert res.model.head.out_features == 12 and 0 <= res.test_accuracy <= 1
