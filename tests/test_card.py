"""One source for measured figures: metrics.json renders the model card, the Model tab and the
README's results tables (skinlesion/card.py, train/report.py)."""
import pytest

from conftest import ROOT
from skinlesion.card import card_body, headline_table, read_card, read_metrics, render_card
from skinlesion.spec import read_spec
from skinlesion.tasks import TASKS
from train.report import readme_with_results

BUNDLED = [t for t in TASKS.values() if (t.model_folder / "metrics.json").is_file()]


def test_readme_tables_are_rendered_from_the_bundled_metrics():
    text = (ROOT / "README.md").read_text()
    assert readme_with_results(text) == text, "README results are stale: run python -m train.report"
    for task in BUNDLED:
        assert f"<!-- results: {task.key} -->\n{headline_table(read_metrics(task.model_folder))}<!-- /results -->" in text


@pytest.mark.parametrize("task", BUNDLED, ids=lambda t: t.key)
def test_bundled_card_is_what_its_metrics_render(task):
    spec, metrics = read_spec(task.model_folder), read_metrics(task.model_folder)
    meta, body = read_card(task.model_folder)
    assert (task.model_folder / "README.md").read_text() == render_card(spec, metrics)
    assert body == card_body(spec, metrics)
    index = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert index["balanced_accuracy"] == round(metrics["splits"]["test"]["balanced_accuracy"], 4)
    assert f"{metrics['splits']['test']['balanced_accuracy']:.3f}" in body
