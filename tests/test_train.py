"""The training and evaluation programs, run as a user runs them (python -m ...)."""
import csv
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import REAL_HAM, REAL_NEU, ROOT, make_ham_folder, needs_real_ham, needs_real_neu, run_train

from skinlesion.decision import softmax
from skinlesion.models.network import load_model_folder
from skinlesion.tasks import get_task
from skinlesion.tasks.dermoscopy import load_ham10000
from skinlesion.transforms import eval_transform
from skinlesion.trust.features import POOLED
from train.config import TrainConfig
from train.device import pick_device
from train.flags import parse_args, read_yaml
from train.loaders import make_loader, predict_logits
from train.loop import class_weights, learning_rate
from train.splits import prepare_splits


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_run_folder_has_everything(tiny_run):
    for name in ("split.csv", "metrics.json", "report.md", "predictions.csv", "confusion_matrix.png",
                 "validation_curve.png", "checkpoint.pt", "model/model.safetensors", "model/config.json",
                 "model/README.md", "model/metrics.json", "model/confusion_matrix.png", "reliability.png",
                 "model/reliability.png", "model/reference.safetensors"):
        assert (tiny_run / name).is_file(), name
    split = read_csv(tiny_run / "split.csv")
    assert list(split[0]) == ["image_id", "group", "label", "split"] and len(split) == 140
    lesion_split = {}
    for row in split:
        assert lesion_split.setdefault(row["group"], row["split"]) == row["split"]
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for s in ("val", "test"):
        m = metrics["splits"][s]
        assert set(m) >= {"accuracy", "balanced_accuracy", "macro_f1", "macro_auc", "per_class",
                          "confusion_matrix", "ece_before_temperature", "ece_after_temperature",
                          "operating_point", "reliability", "prediction_sets", "unsure"}
        assert np.sum(m["confusion_matrix"]) == m["n"]
        assert sum(b["count"] for b in m["reliability"]["after_temperature"]) == m["n"]
    assert set(metrics["splits"]["test"]["per_class"]["mel"]) >= {"sensitivity", "specificity", "precision", "f1"}
    config = json.loads((tiny_run / "model/config.json").read_text())
    assert config["temperature"] == metrics["temperature"] > 0
    assert set(config["thresholds"]) == {"akiec", "bcc", "mel"}
    assert all(0 < t <= 1 for t in config["thresholds"].values())
    for code in config["thresholds"]:
        assert metrics["splits"]["val"]["operating_point"][code]["sensitivity"] >= 0.9
    report = (tiny_run / "report.md").read_text()
    assert "balanced accuracy" in report and "Recall-first operating point" in report
    assert "Input check" in report and "90% prediction sets" in report and "reliability.png" in report
    check = metrics["input_check"]
    assert check["threshold"] == config["input_check"]["threshold"] and 0.9 <= check["val_pass"] <= 1
    assert {"photographs", "photo crops", "synthetic"} <= set(check["families"])
    modality = metrics["modality_check"]  # the refusing check: fitted with run-time families, each measured unseen
    assert modality["threshold"] == config["modality_check"]["threshold"] and 0.9 <= modality["val_pass"] <= 1
    assert POOLED not in config["modality_check"]["features"] and modality["unseen_source"] == {}  # no other source
    assert all(f["unseen_by_the_fit"] and 0 <= f["refused"] <= 1 and f["answered"] + f["refused"] == 1
               for f in modality["families"].values())
    served = metrics["sources"]  # each set as the app answers it
    assert set(served) == {"test", "strongly shifted test"} and served["test"]["n"] == metrics["splits"]["test"]["n"]
    assert config["unfamiliar"]["on"] == "strongly shifted copies of test images"


@pytest.mark.slow
def test_stored_coverage_is_recomputed_from_the_saved_predictions(tiny_run):
    """The card's coverage and set size are those of the sets in predictions.csv, and those sets
    are what config.json's quantiles make of the saved probabilities (up to their rounding)."""
    from skinlesion.decision import DecisionRule
    from skinlesion.trust.conformal import nonconformity
    config = json.loads((tiny_run / "model/config.json").read_text())
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    rule = DecisionRule.from_config(config)
    quantiles = np.array([rule.quantiles[c] for c in rule.codes])
    for split in ("val", "test"):
        rows = [r for r in read_csv(tiny_run / "predictions.csv") if r["split"] == split]
        saved = np.array([[c in r["prediction_set"].split() for c in rule.codes] for r in rows])
        labels = np.array([rule.codes.index(r["label"]) for r in rows])
        stored = metrics["splits"][split]["prediction_sets"]
        assert saved[np.arange(len(labels)), labels].mean() == pytest.approx(stored["coverage"], abs=1e-12)
        assert saved.sum(1).mean() == pytest.approx(stored["mean_size"], abs=1e-12)
        probs = np.array([[float(r[f"p_{c}"]) for c in rule.codes] for r in rows])
        clear = np.abs(nonconformity(probs) - quantiles) > 1e-6  # not on a quantile's edge
        assert (rule.prediction_set(probs) == saved)[clear].all()
    assert metrics["splits"]["val"]["prediction_sets"]["coverage"] >= 0.9  # calibrated there


@pytest.mark.slow
def test_reloaded_model_predicts_what_training_measured(tiny_run, tmp_path):
    model, spec = load_model_folder(tiny_run / "model")
    config = spec.config
    data = tiny_run.parent / "ham"
    splits = prepare_splits(load_ham10000(data), 32, 0, None, spec.codes, split=tiny_run / "split.csv")
    logits = predict_logits(model, make_loader(splits["val"], eval_transform(32), 64, 0, shuffle=False),
                            pick_device("cpu"))
    probs = softmax(logits, config["temperature"])
    rows = [r for r in read_csv(tiny_run / "predictions.csv") if r["split"] == "val"]
    assert [r["image_id"] for r in rows] == [r.image_id for r in splits["val"].records]
    saved = np.array([[float(r[f"p_{c}"]) for c in config["label_names"]] for r in rows])
    assert np.allclose(probs, saved, atol=2e-6)
    assert np.allclose(probs.sum(axis=1), 1)
    # measured on the in-memory model before saving == measured after loading it back
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    val = metrics["splits"]["val"]["argmax"]["balanced_accuracy"]  # training selects on the arg-max
    assert config["training"]["val_balanced_accuracy"] == pytest.approx(val)


@pytest.mark.slow
def test_model_card_carries_hub_metadata_and_the_measured_results(tiny_run):
    card = (tiny_run / "model/README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "timm" and meta["license"] == "cc-by-nc-sa-4.0"
    assert meta["datasets"] == ["HAM10000"]
    results = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    test = json.loads((tiny_run / "metrics.json").read_text())["splits"]["test"]
    assert results["balanced_accuracy"] == round(test["balanced_accuracy"], 4)
    assert results["accuracy"] == round(test["accuracy"], 4)
    for text in ("Not a medical device", "light skin types", "CC BY-NC-SA 4.0", "doi:10.1038/sdata.2018.161",
                 "trained from random initialisation (no pretrained weights) on the whole dataset"):
        assert text in card


@pytest.mark.slow
def test_evaluate_program_reproduces_the_training_evaluation(tiny_run, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model_dir)
    result = run_train("--model", model_dir, "--data", tiny_run.parent / "ham", "--split",
                       tiny_run / "split.csv", "--out", tmp_path / "eval", "--workers", "0",
                       module="train.evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test: balanced accuracy" in result.stderr
    before = json.loads((tiny_run / "metrics.json").read_text())
    after = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert after["splits"]["test"]["balanced_accuracy"] == before["splits"]["test"]["balanced_accuracy"]
    assert after["temperature"] == pytest.approx(before["temperature"], rel=1e-4)
    assert (tmp_path / "eval/report.md").is_file() and (model_dir / "README.md").is_file()


@pytest.mark.slow
def test_resume_after_an_interrupted_epoch(tmp_path):
    data = make_ham_folder(tmp_path / "ham")
    out = tmp_path / "run"
    args = ["--data", data, "--out", out, "--epochs", "4", "--image-size", "48", "--batch-size", "16",
            "--workers", "0"]
    process = subprocess.Popen([sys.executable, "-m", "train", *map(str, args)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # as a power cut would, in the middle of the next epoch
    process.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()

    mismatched = run_train(*args[:-6], "--image-size", "32", "--batch-size", "16", "--workers", "0", "--resume")
    assert mismatched.returncode == 2 and "made with different settings" in mismatched.stderr

    resumed = run_train(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = int(resumed.stderr.split("after epoch ")[1].split()[0])
    assert 1 <= done < 4
    assert f"epoch {done + 1}/4" in resumed.stderr and f"epoch {done}/4 " not in resumed.stderr
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


@pytest.mark.slow  # runs the command line in a new process
def test_bad_data_folder_gives_a_message_not_a_traceback(tmp_path):
    result = run_train("--data", tmp_path / "nothing", "--out", tmp_path / "run")
    assert result.returncode == 2
    assert "metadata file not found" in result.stderr and "Traceback" not in result.stderr


def test_yaml_config_with_command_line_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 7\nlr: 0.01\nclass_weights: inverse\ndata: /d\n")
    parsed = parse_args(["--config", str(config), "--out", "o", "--lr", "0.5"])
    assert (parsed.optim.epochs, parsed.optim.lr, parsed.optim.class_weights) == (7, 0.5, "inverse")
    assert str(parsed.dataset.data) == "/d" and str(parsed.runtime.out) == "o"
    for bad in ("epoch: 7\n", "lr: fast\n", "lr: -1\n", "class_weights: square\n", "pretrained: 1\n"):
        config.write_text(bad)
        with pytest.raises(SystemExit):
            parse_args(["--config", str(config), "--data", "d", "--out", "o"])
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "o", "--epochs", "0"])


def test_every_bundled_config_file_parses():
    for path in sorted((ROOT / "train" / "configs").glob("*.yaml")):
        settings, given = parse_args(["--config", str(path), "--data", "d", "--out", "o"]).settings(), read_yaml(path)
        assert {k: settings[k] for k in given} == given


def test_help_shows_the_settings_groups(capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    for title in ("data:", "model:", "optimisation:", "augmentation:", "runtime:"):
        assert f"\n{title}\n" in text
    for flag in ("--config", "--weight-decay", "--augment-on", "--no-explanations", "--resume", "--image-size"):
        assert flag in text


@pytest.mark.slow
def test_the_whole_config_is_saved_beside_the_run_and_in_the_model_folder(tmp_path):
    data = make_ham_folder(tmp_path / "ham", per_class=20)
    out, config = tmp_path / "run", tmp_path / "run.yaml"
    config.write_text("image_size: 32\nepochs: 1\nbatch_size: 16\nworkers: 0\ndevice: cpu\nseed: 3\n"
                      "lr: 0.004\nweight_decay: 0.01\nwarmup_epochs: 0.25\nclip_grad: 1.5\nema_decay: 0.99\n"
                      "aug_strength: 0.5\nclass_weights: none\nno_explanations: true\n")
    result = run_train("--config", config, "--data", data, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    given = parse_args(["--config", str(config), "--data", str(data), "--out", str(out)])
    assert TrainConfig.from_settings(read_yaml(out / "config.yaml")) == given
    training = json.loads((out / "model/config.json").read_text())["training"]
    settings = given.settings()
    assert {k: training[k] for k in settings} == {**settings, "data": data.name, "out": out.name}
    assert training["world_size"] == 1 and training["device"] == "cpu" and training["best_epoch"] == 1
    assert {"weights", "val_balanced_accuracy", "precision", "initialisation"} <= set(training)


def test_class_weights_schemes_keep_the_loss_scale():
    labels = np.array([0] * 80 + [1] * 16 + [2] * 4)
    for scheme, ratio in (("inverse", 20.0), ("inverse-sqrt", np.sqrt(20)), ("none", 1.0)):
        w = class_weights(labels, 3, scheme).numpy()
        assert w[2] / w[0] == pytest.approx(ratio)
        assert (w[labels]).mean() == pytest.approx(1.0)


def test_learning_rate_warms_up_then_decays():
    lrs = [learning_rate(s, 100, 10, 1.0, 0.01) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.01, abs=1e-3)


@needs_real_ham
@pytest.mark.slow
def test_tiny_real_training_run(tmp_path):
    out = tmp_path / "run"
    result = run_train("--data", REAL_HAM, "--out", out, "--max-samples", "300", "--image-size", "64",
                       "--epochs", "2", "--workers", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    split = read_csv(out / "split.csv")
    assert 290 <= len(split) <= 300
    assert {r["label"] for r in split} == {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    model, spec = load_model_folder(out / "model")
    assert spec.training["max_samples"] == 300 and spec.input_size == 64
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["splits"]["test"]["n"] == sum(r["split"] == "test" for r in split)


@needs_real_neu
@pytest.mark.slow
def test_short_cpu_training_on_neu_beats_chance_by_far(tmp_path):
    out = tmp_path / "neu"
    result = run_train("--task", "neu", "--data", REAL_NEU, "--out", out, "--max-samples", "600",
                       "--image-size", "64", "--epochs", "5", "--batch-size", "32", "--workers", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["splits"]["test"]
    assert test["accuracy"] >= 0.45, test["accuracy"]  # chance is 1/6
    assert metrics["thresholds"] == {} and set(metrics["prediction_sets"]["quantiles"]) == set(get_task("neu").codes)
    assert set(test["unsure"]) == {"rate", "accuracy_inside", "accuracy_outside", "mistakes_caught"}
    assert metrics["input_check"]["families"]["other task"]["n"] == 300  # HAM10000 images, beside NEU
    quality = metrics["explanations"]
    assert quality["annotation"] == "defect boxes" and quality["n"] == min(50, test["n"])
    methods = ("Grad-CAM", "Integrated Gradients", "Occlusion")
    assert all(0 <= quality["methods"][m]["energy_inside"] <= 1 for m in methods)
    card = (out / "model" / "README.md").read_text()
    assert "license: other" in card and "Song K., Yan Y." in card and "goes to manual review" in card
    split = read_csv(out / "split.csv")
    assert {r["label"] for r in split} == {"crazing", "inclusion", "patches", "pitted_surface",
                                           "rolled-in_scale", "scratches"}
