"""The bundled models (assets/models/ham10000 for dermoscopy, assets/models/neu for steel): they load on
the CPU, carry their calibration, and their cards tell the truth — checked on a fixed,
committed list of test-split images per task."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from conftest import SHARED_DATA, read_card
from sklearn.metrics import balanced_accuracy_score

from skinlesion import Predictor
from skinlesion.tasks import TASKS, get_task

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(params=[(task, engine) for task in sorted(TASKS) for engine in ("onnx", "torch")],
                ids=lambda param: "-".join(param))
def bundled(request, bundled_models, bundled_torch_models):
    task, engine = request.param
    found = (bundled_models if engine == "onnx" else bundled_torch_models)[task]
    assert found.engine == engine  # the bundled folders ship ONNX: the default engine takes it
    return found


def card_results(predictor) -> dict[str, float]:
    meta, _ = read_card(predictor.folder)
    return {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}


def test_default_is_the_dermoscopy_model():
    assert Predictor.from_pretrained().folder == get_task("ham10000").model_folder  # the default task's


def test_bundled_model_loads_with_its_calibration(bundled):
    assert bundled.folder == bundled.task.model_folder and bundled.device.type == "cpu"
    assert bundled.codes == bundled.task.codes and bundled.rule.temperature > 0
    if bundled.task.key == "ham10000":
        assert set(bundled.rule.thresholds) == {"akiec", "bcc", "mel"}
    else:
        assert not bundled.rule.thresholds
    assert set(bundled.rule.quantiles) == set(bundled.codes) and bundled.trust.check is not None
    assert bundled.trust.gallery is not None
    meta, body = read_card(bundled.folder)
    assert meta["library_name"] == "timm" and meta["license"] == bundled.task.license
    assert bundled.spec.config["pretrained_cfg"]["license"] == bundled.task.license
    assert meta["model_status"] in ("placeholder", "release")
    assert "Intended use" in body and "Limitations of the data" in body
    assert "How far the explanations can be trusted" in body
    assert "Input check" in body and "90% prediction sets" in body and "Similar cases" in body


def test_card_and_metrics_json_give_the_same_numbers(bundled):
    metrics = json.loads((bundled.folder / "metrics.json").read_text())
    test, results = metrics["splits"]["test"], card_results(bundled)
    assert results["balanced_accuracy"] == round(test["balanced_accuracy"], 4)
    assert results["accuracy"] == round(test["accuracy"], 4)
    assert len((FIXTURES / f"{bundled.task.key}_test_ids.txt").read_text().split()) == test["n"]
    methods = metrics["explanations"]["methods"]
    assert list(methods) == ["Grad-CAM", "Integrated Gradients", "Occlusion"]
    for figures in methods.values():  # localisation, faithfulness against a random order, sanity
        assert 0 <= figures["energy_inside"] <= 1 and 0 <= figures["deletion"] <= 1
        assert figures["insertion_random"] is not None and len(figures["sanity"]["spearman"]) == 10


@pytest.mark.slow
def test_scores_on_the_committed_test_ids_match_the_card(bundled):
    task = bundled.task
    root = SHARED_DATA / task.data_folder
    if not root.is_dir():
        pytest.skip(f"{task.dataset} not found at {root}")
    labels = {r.image_id: (r.label, r.path) for r in task.load(root)}
    ids = (FIXTURES / f"{bundled.task.key}_test_ids.txt").read_text().split()
    truth = [labels[image_id][0] for image_id in ids]
    predicted = [answer.decided for start in range(0, len(ids), 32)  # the batch path: 32 images a pass
                 for answer in bundled.analyse_many([bundled.prepare(labels[i][1]) for i in ids[start:start + 32]])]
    results = card_results(bundled)
    assert balanced_accuracy_score(truth, predicted) == pytest.approx(results["balanced_accuracy"], abs=0.01)
    assert np.mean(np.array(truth) == np.array(predicted)) == pytest.approx(results["accuracy"], abs=0.01)


@pytest.mark.slow
def test_shipped_weights_give_the_probabilities_measured_at_export(bundled):
    """train.export ships float16 weights only when no probability moves by more than 1e-3
    (else float32), and keeps the float32 model's probabilities of the first committed test
    ids: the shipped weights must still give them, within that tolerance."""
    reference = FIXTURES / f"{bundled.task.key}_fp32_probabilities.csv"
    if not reference.is_file():
        pytest.skip(f"the bundled {bundled.task.key} model was not exported through train.export")
    state = safetensors.torch.load_file(bundled.folder / "model.safetensors")
    assert {v.dtype for v in state.values() if v.is_floating_point()} <= {torch.float16, torch.float32}
    assert next(bundled.primary.parameters()).dtype == torch.float32  # loading casts float16 back
    task = bundled.task
    root = SHARED_DATA / task.data_folder
    if not root.is_dir():
        pytest.skip(f"{task.dataset} not found at {root}")
    paths = {r.image_id: r.path for r in task.load(root)}
    with reference.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100
    predicted = {row["image_id"]: bundled.predict(paths[row["image_id"]]) for row in rows}  # one pass each
    worst = max(abs(predicted[row["image_id"]][c] - float(row[c])) for row in rows for c in bundled.codes)
    assert worst <= 1e-3
