"""gfer.train, gfer.evaluate and gfer.protocol: the CLI's options and defaults as
keyword arguments, the same run folders, weights and metrics as `gfer train`, `gfer
eval --json` and `gfer protocol`, dicts that pandas takes, errors that say what was
wrong, and Ctrl-C that stops cleanly."""

import inspect
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import gfer
from conftest import CLASSES, TINY_RECIPE, read_tensors, run_cli, save_png, synthetic_face


def cli_recipe():
    """TINY_RECIPE as `gfer train` flags."""
    return [
        "--fast", "--views", "2", "--mlp-hidden", "32", "--epochs", "15",
        "--batch-size", "8", "--lr", "0.002",
    ]


def test_train_returns_the_run_and_its_metrics(trained, tmp_path):
    run = Path(trained["run"])
    assert trained["finished"] is True and trained["stopped_at"] is None
    assert trained["bundle"] == str(run / "model.safetensors")
    assert trained["best"] == str(run / "best.safetensors")
    for name in ["config.json", "log.jsonl", "report.md", "checkpoints/last.safetensors"]:
        assert (run / name).exists(), name
    assert [e["epoch"] for e in trained["log"]] == list(range(1, 16))
    assert set(trained["log"][0]) >= {"loss", "train_accuracy", "eval_accuracy", "lr"}
    metrics = trained["metrics"]
    assert metrics["total"] == 14 and metrics["confusion"]["classes"] == CLASSES
    assert metrics["accuracy"] > 2 / 7, metrics


def test_train_writes_what_gfer_train_writes(gfer_bin, dataset, tiny_clip, trained, tmp_path):
    """Same options, same defaults for everything not given: the same config.json and
    bit for bit the same model."""
    out = tmp_path / "cli-run"
    cache = Path(trained["run"]).parent / "cache"
    run_cli(
        gfer_bin, "train", "--data", dataset, "--out", out, "--weights", tiny_clip,
        "--cache", cache, *cli_recipe(),
    )
    ours, theirs = Path(trained["run"]), out
    assert json.loads((ours / "config.json").read_text()) == json.loads(
        (theirs / "config.json").read_text()
    )
    for bundle in ["model.safetensors", "best.safetensors"]:
        assert read_tensors(ours / bundle) == read_tensors(theirs / bundle), bundle
    assert (ours / "data.json").read_text() == (theirs / "data.json").read_text()


def test_evaluate_is_gfer_eval_json(gfer_bin, bundle, dataset, tiny_clip):
    args = ["eval", "--model", bundle, "--weights", tiny_clip, "--data", dataset, "--json"]
    theirs = json.loads(run_cli(gfer_bin, *args).stdout)
    ours = gfer.evaluate(str(bundle), dataset, weights=tiny_clip, progress=False)
    assert ours == theirs
    # Several data sets, another split, another batch size: the same metrics.
    both = gfer.evaluate(bundle, [dataset, dataset + ":domain=again"], weights=tiny_clip,
                         split="train", batch_size=5, progress=False)
    args = ["eval", "--model", bundle, "--weights", tiny_clip, "--data", dataset,
            "--data", dataset + ":domain=again", "--split", "train", "--json"]
    assert both["results"] == json.loads(run_cli(gfer_bin, *args).stdout)["results"]
    assert both["results"][dataset]["split"] == "train"
    assert both["results"][dataset]["metrics"]["total"] == 84


def test_evaluate_logs_the_images_it_skips(bundle, tiny_clip, tmp_path, caplog):
    from conftest import write_folder_dataset

    spec = write_folder_dataset(tmp_path / "data", 1, 2)
    (tmp_path / "data" / "test" / "anger" / "broken.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="gfer"):
        result = gfer.evaluate(bundle, spec, weights=tiny_clip, progress=False)
    assert result["results"][spec]["skipped"] == 1
    assert any("broken.png" in r.getMessage() and r.name.startswith("gfer") for r in caplog.records)


def test_protocol_writes_what_gfer_protocol_writes(gfer_bin, dataset, tiny_clip, tmp_path):
    other = dataset + ":domain=other"
    common = dict(weights=tiny_clip, epochs=3, batch_size=8, views=2, mlp_hidden=[16])
    ours = gfer.protocol(
        source=f"syn={dataset}", target=[f"syn={dataset}", f"other={other}"],
        method="cafe:fast,linear-probe:fast", out=tmp_path / "py", reference="paper",
        progress=False, **common,
    )
    run_cli(
        gfer_bin, "protocol", "--source", f"syn={dataset}", "--target", f"syn={dataset},other={other}",
        "--method", "cafe:fast,linear-probe:fast", "--out", tmp_path / "cli", "--reference", "paper",
        "--weights", tiny_clip, "--epochs", "3", "--batch-size", "8", "--views", "2",
        "--mlp-hidden", "16",
    )
    for name in ["table.json", "table.csv", "table.md", "per_class.md", "protocol.json"]:
        assert (tmp_path / "py" / name).read_text() == (tmp_path / "cli" / name).read_text(), name
    assert ours["complete"] is True and ours["missing"] == [] and ours["failed"] == []
    assert ours["table"] == json.loads((tmp_path / "py" / "table.json").read_text())
    assert ours["markdown"] == (tmp_path / "py" / "table.md").read_text()
    assert [(r["method"], r["source"]) for r in ours["rows"]] == [
        ("cafe:fast", "syn"), ("linear-probe:fast", "syn")
    ]
    row = ours["rows"][0]
    assert list(row) == ["method", "source", "syn", "other", "mean", "unseen_mean",
                         "syn (paper)", "other (paper)"]
    assert row["syn"] == ours["table"]["rows"][0]["accuracy"][0]
    assert row["mean"] == pytest.approx((row["syn"] + row["other"]) / 2)
    assert row["unseen_mean"] == row["other"] and row["syn (paper)"] is None
    pandas = pytest.importorskip("pandas")
    table = pandas.DataFrame(ours["rows"])
    assert table.shape == (2, 8)
    # Merging the finished folder gives the same.
    merged = gfer.protocol(merge=tmp_path / "py")
    assert merged["rows"] == ours["rows"] and merged["complete"]


def test_stop_after_steps_then_resume_ends_at_the_same_weights(dataset, tiny_clip, trained, tmp_path):
    out = tmp_path / "run"
    cache = Path(trained["run"]).parent / "cache"
    stopped = gfer.train(dataset, out, weights=tiny_clip, cache=cache, stop_after_steps=20, **TINY_RECIPE)
    assert stopped["finished"] is False and stopped["bundle"] is None
    assert stopped["stopped_at"] == {"epoch": 2, "step": 9}
    resumed = gfer.train(resume=out, progress=False)
    assert resumed["finished"] is True
    assert [e["epoch"] for e in resumed["log"]] == list(range(2, 16))
    assert read_tensors(out / "model.safetensors") == read_tensors(Path(trained["bundle"]))


def test_cache_only_builds_the_cache_alone(dataset, tiny_clip, tmp_path):
    result = gfer.train(dataset, weights=tiny_clip, cache=tmp_path / "cache", cache_only=True,
                        fast=True, views=2, shard="0/2", progress=False)
    assert result["cache"] == str(tmp_path / "cache")
    assert result["counts"]["clean"]["computed"] == 49  # every other image of 98
    assert result["counts"]["mask_clean"] is None


@pytest.mark.parametrize(
    "kwargs, says",
    [
        (dict(method="cafe-plus"), r"method='cafe-plus'.*unknown variant.*linear-probe"),
        (dict(backbone="vit-h"), r"backbone='vit-h'.*clip-vit-b32"),
        (dict(precision="fp16"), r"precision='fp16'.*`f32`, `bf16`, `int8`"),
        (dict(preprocess="imagenet"), r"preprocess='imagenet'"),
        (dict(generator="tokens:0"), r"generator='tokens:0'.*number from 1"),
        (dict(fast=True, generator="resnet18"), r"--generator resnet18 .*--mask-init"),
        (dict(device="gpu"), r"device='gpu': .*expected cpu, cuda"),
        (dict(shard="1/2"), r"shard applies to cache_only"),
        (dict(cache_only=True), r"pass fast=True"),
    ],
)
def test_wrong_options_say_what_is_wrong(dataset, tiny_clip, tmp_path, kwargs, says):
    with pytest.raises(gfer.GferError, match=says):
        gfer.train(dataset, tmp_path / "run", weights=tiny_clip, progress=False, **kwargs)


def test_run_folders_and_data_sets_are_checked(dataset, tiny_clip, trained, tmp_path):
    with pytest.raises(gfer.GferError, match=r"already holds a run; pass resume="):
        gfer.train(dataset, trained["run"], weights=tiny_clip)
    with pytest.raises(gfer.GferError, match="pass no data or out"):
        gfer.train(dataset, resume=trained["run"])
    with pytest.raises(gfer.GferError, match="data set nope:/x"):
        gfer.train("nope:/x", tmp_path / "run", weights=tiny_clip)
    with pytest.raises(FileNotFoundError, match="config.json"):
        gfer.train(resume=tmp_path / "no-run")
    # One --data value is one spec, commas and all (gfer eval does not split it).
    with pytest.raises(gfer.GferError, match="folder:/nowhere,else"):
        gfer.evaluate(trained["bundle"], "folder:/nowhere,else", weights=tiny_clip)
    with pytest.raises(gfer.GferError, match="split: unknown split 'dev'"):
        gfer.evaluate(trained["bundle"], dataset, weights=tiny_clip, split="dev")
    with pytest.raises(ValueError, match=r"precision='int4'.*`f32`, `bf16`, `int8`"):
        gfer.evaluate(trained["bundle"], dataset, weights=tiny_clip, precision="int4")
    with pytest.raises(ValueError, match=r"precision='fp16'.*`f32`, `bf16`, `int8`"):
        gfer.protocol(source=dataset, target=dataset, out=tmp_path / "p", precision="fp16")
    with pytest.raises(gfer.GferError, match=r"method 'slow' is not a method"):
        gfer.protocol(source=dataset, target=dataset, method="slow", out=tmp_path / "p")
    with pytest.raises(gfer.GferError, match="source and target are required"):
        gfer.protocol(out=tmp_path / "p")


def cli_defaults(gfer_bin, command):
    """`--flag-name` -> its `[default: ...]` in `gfer COMMAND --help`."""
    help_text = run_cli(gfer_bin, command, "--help").stdout
    defaults = {}
    for block in re.split(r"\n(?=\s+(?:-\w, )?--)", help_text):
        flag = re.match(r"\s+(?:-\w, )?--([\w-]+)", block)
        default = re.search(r"\[default: ([^\]]*)\]", block)
        if flag and default:
            defaults[flag.group(1)] = default.group(1)
    return defaults


@pytest.mark.parametrize(
    "function, command",
    [
        (gfer.train, "train"),
        (gfer.protocol, "protocol"),
        (gfer.evaluate, "eval"),
        (gfer.Predictor, "predict"),
        (gfer.Encoder, "extract"),
    ],
)
def test_defaults_are_the_clis(gfer_bin, function, command):
    """Every flag of the command that has a default is a keyword with that default (the
    output format of `gfer predict` aside: Python gets objects)."""
    cli = cli_defaults(gfer_bin, command)
    cli.pop("format", None)
    # Defaults that depend on something else are None in Python: the threshold on the
    # detector, the assets folder on $GFER_ASSETS.
    none_in_python = ["det_threshold", "assets"] if command == "predict" else []
    if command == "predict":
        # Videos are the CLI's alone; the Predictor takes images.
        for flag in ("fps", "smooth", "det-threshold", "assets"):
            cli.pop(flag)
    try:
        parameters = inspect.signature(function).parameters
    except ValueError:
        if sys.version_info < (3, 10):
            pytest.skip("a class of the stable ABI shows no signature before Python 3.10")
        raise
    for name in none_in_python:
        assert parameters[name].default is None, name
    for flag, theirs in cli.items():
        name = "lambda_" if flag == "lambda" else flag.replace("-", "_")
        assert name in parameters, f"--{flag} has no keyword {name}"
        ours = parameters[name].default
        if isinstance(ours, (int, float)) and not isinstance(ours, bool):
            assert float(theirs) == ours, (name, theirs, ours)
        else:
            assert theirs == str(ours), (name, theirs, ours)
    assert len(cli) >= 2, cli


INTERRUPTED_RUN = """
import sys, gfer
try:
    gfer.train(sys.argv[1], sys.argv[2], weights=sys.argv[3], cache=sys.argv[4], fast=True,
               views=2, mlp_hidden=[32], epochs=1000000, batch_size=8, lr=2e-3, progress=False)
except KeyboardInterrupt as err:
    print("KeyboardInterrupt:", err)
    sys.exit(130)
print("finished")
"""


def test_ctrl_c_saves_the_run_and_raises_keyboard_interrupt(dataset, tiny_clip, trained, tmp_path):
    out = tmp_path / "run"
    cache = Path(trained["run"]).parent / "cache"
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_RUN, dataset, str(out), str(tiny_clip), str(cache)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 3):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (stdout, stderr)
    assert "KeyboardInterrupt: stopped in epoch" in stdout, stdout
    assert f"saved. Continue with: gfer.train(resume='{out}')" in stdout, stdout
    assert "interrupted: finishing the current step and saving" in stderr, stderr
    assert (out / "checkpoints" / "last.safetensors").exists()
    # The saved run continues.
    resumed = gfer.train(resume=out, stop_after_steps=3, progress=False)
    assert resumed["finished"] is False
    assert resumed["stopped_at"]["epoch"] >= 4


PROGRESS_RUN = """
import sys, gfer
gfer.evaluate(sys.argv[1], sys.argv[2], weights=sys.argv[3], batch_size=1)
"""


def test_progress_bars_draw_on_a_terminal_only(bundle, dataset, tiny_clip):
    import pty

    args = [sys.executable, "-c", PROGRESS_RUN, str(bundle), dataset, str(tiny_clip)]
    piped = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert "images" not in piped.stderr
    # On a terminal (a pseudo-terminal here) the bar is drawn.
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="120")
    done = subprocess.run(args, stderr=follower, stdout=subprocess.DEVNULL, env=env, timeout=120)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert done.returncode == 0
    assert b"/14 images" in drawn, drawn[-500:]
