"""One source for measured figures: metrics.json renders the model card, the Model tab and the
README's results tables (skinlesion/models/card.py, train/report.py)."""
import re

import pytest
from conftest import ROOT, read_card

from skinlesion.models.card import card_body, headline_table, read_metrics, render_card
from skinlesion.models.spec import read_spec
from skinlesion.tasks import TASKS
from train.ablation import lever_row, render_summary
from train.report import DOCS, anchor, lever_sections, with_results

BUNDLED = [t for t in TASKS.values() if (t.model_folder / "metrics.json").is_file()]


def test_results_tables_are_rendered_from_the_bundled_metrics():
    for doc in DOCS:
        assert with_results(doc.read_text()) == doc.read_text(), f"{doc.name} is stale: run python -m train.report"
    text = (ROOT / "docs" / "results.md").read_text()
    for task in BUNDLED:
        table = headline_table(read_metrics(task.model_folder))
        assert f"<!-- results: {task.key} -->\n{table}<!-- /results -->" in text


def test_the_lever_summary_has_a_row_per_table_linked_to_its_heading():
    doc = ROOT / "docs" / "levers.md"
    text = doc.read_text()
    sections = lever_sections(doc)
    assert len(sections) == len(re.findall(r"^<!-- (?:levers|resolution): \S+ -->$", text, re.M)) >= 19
    headings = {anchor(h) for h in re.findall(r"^## (.+)$", text, re.M)}
    assert all(link.split("#")[1] in headings for _, link, _, _ in sections)
    summary = render_summary(sections)
    assert len(summary.splitlines()) == len(sections) + 2
    soup = "[A soup of the student's fine-tunings](levers.md#a-soup-of-the-students-fine-tunings-measured-not-shipped)"
    row = "soup · hflip+vflip | 0.795 | student · hflip+vflip: 0.791 | +0.004 (-0.011 to +0.019)"
    assert f"| {soup} | {row} |" in summary
    assert f"<!-- summary: levers.md -->\n{summary}<!-- /summary -->" in (ROOT / "docs" / "results.md").read_text()


def test_a_levers_row_is_its_own_network_at_one_networks_cost():
    def row(lever, val_ba):
        return {"lever": lever, "val_ba": val_ba}
    rows = [row("student · hflip+vflip", .79), row("student · hflip", .81), row("soup", .78), row("soup · hflip", .80),
            row("student + soup · hflip", .85), row("soup · hflip + record", .795)]
    assert lever_row(rows, "student · hflip+vflip")["lever"] == "soup · hflip"
    views = [row("student", .77), row("student · hflip", .79), row("student · hflip+vflip", .78)]
    assert lever_row(views, "student")["lever"] == "student · hflip"
    assert lever_row(views[:1], "student")["lever"] == "student"


@pytest.mark.parametrize("task", BUNDLED, ids=lambda t: t.key)
def test_bundled_card_is_what_its_metrics_render(task):
    spec, metrics = read_spec(task.model_folder), read_metrics(task.model_folder)
    meta, body = read_card(task.model_folder)
    assert (task.model_folder / "README.md").read_text() == render_card(spec, metrics)
    assert body == card_body(spec, metrics)
    index = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert index["balanced_accuracy"] == round(metrics["splits"]["test"]["balanced_accuracy"], 4)
    assert f"{metrics['splits']['test']['balanced_accuracy']:.3f}" in body
