"""One source for measured figures: metrics.json renders the model card, the Model tab and the
README's results tables (skinlesion/models/card.py, train/report.py)."""
import pytest
from conftest import ROOT, read_card

from skinlesion.models.card import card_body, headline_table, read_metrics, render_card
from skinlesion.models.spec import read_spec
from skinlesion.tasks import TASKS
from train.report import DOCS, with_results

BUNDLED = [t for t in TASKS.values() if (t.model_folder / "metrics.json").is_file()]


def test_results_tables_are_rendered_from_the_bundled_metrics():
    for doc in DOCS:
        assert with_results(doc.read_text()) == doc.read_text(), f"{doc.name} is stale: run python -m train.report"
    text = (ROOT / "docs" / "results.md").read_text()
    for task in BUNDLED:
        table = headline_table(read_metrics(task.model_folder))
        assert f"<!-- results: {task.key} -->\n{table}<!-- /results -->" in text


@pytest.mark.parametrize("task", BUNDLED, ids=lambda t: t.key)
def test_bundled_card_is_what_its_metrics_render(task):
    spec, metrics = read_spec(task.model_folder), read_metrics(task.model_folder)
    meta, body = read_card(task.model_folder)
    assert (task.model_folder / "README.md").read_text() == render_card(spec, metrics)
    assert body == card_body(spec, metrics)
    index = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert index["balanced_accuracy"] == round(metrics["splits"]["test"]["balanced_accuracy"], 4)
    assert f"{metrics['splits']['test']['balanced_accuracy']:.3f}" in body
