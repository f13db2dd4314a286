"""The task registry (skinlesion/tasks/): one module per task, found by the package; adding a
task is adding one file."""
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

from skinlesion.tasks import BENIGN, DEFAULT_TASK, HIGH_RISK, MALIGNANT, PRE_MALIGNANT, TASKS, get_task


def test_ham10000_table_is_complete():
    table = get_task("ham10000").classes
    assert [c.code for c in table] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert {c.code: c.risk for c in table} == {
        "akiec": PRE_MALIGNANT, "bcc": MALIGNANT, "mel": MALIGNANT,
        "bkl": BENIGN, "df": BENIGN, "nv": BENIGN, "vasc": BENIGN}
    assert all(c.name and c.description for c in table)
    assert len({c.colour for c in table}) == len(table)
    assert all(c.colour.startswith("#") and len(c.colour) == 7 for c in table)


def test_high_risk_classes_come_from_the_risk_groups():
    assert get_task().high_risk_codes == ["akiec", "bcc", "mel"]
    assert get_task("neu").high_risk_codes == []
    assert set(HIGH_RISK) == {MALIGNANT, PRE_MALIGNANT}


def test_registry_finds_both_tasks_default_first_and_names_an_unknown_one():
    assert list(TASKS) == ["ham10000", "neu"] and DEFAULT_TASK == "ham10000" and get_task() is TASKS["ham10000"]
    for task in TASKS.values():
        assert len(set(task.codes)) == len(task.codes)
        assert task.info(task.codes[0]).code == task.codes[0]
    with pytest.raises(ValueError, match="unknown task 'x'.*ham10000"):
        get_task("x")


THIRD_TASK = '''
from pathlib import Path
from ..data import Record
from .base import DEFECT, ClassInfo, Task
from .verdicts import ManualReview

def load(root):
    return [Record(p.stem, p.stem, p.stem.split("_")[0], p) for p in sorted(Path(root).glob("*.png"))]

TASK = Task(key="leaves", title="Leaf disease", subject="a photograph of a leaf",
            refusal="This does not look like a leaf",
            classes=(ClassInfo("rust", "Rust", "Orange pustules.", DEFECT, "#aa5500"),
                     ClassInfo("healthy", "Healthy", "No disease.", DEFECT, "#00aa00")),
            load=load, annotation=lambda root, image_id, shape: None, annotation_name="none",
            data_folder="leaves", dataset="Leaves",
            license="other", license_text="", citation="", intended_use="", out_of_scope="",
            limitations="", ethics="", disclaimer="A person decides.",
            verdict=ManualReview(review="Look again", found="Found: {name}"))
'''


@pytest.mark.slow  # runs the command line in a new process
def test_a_third_task_is_one_file(tmp_path):
    """A copy of the code plus one task module: the CLI offers it, the decision rule and the
    verdict work for it, and nothing else had to change."""
    for package in ("skinlesion", "train"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "skinlesion" / "tasks" / "leaves.py").write_text(THIRD_TASK)
    check = ("import numpy as np\n"
             "from skinlesion.tasks import TASKS\n"
             "from skinlesion.decision import DecisionRule\n"
             "assert list(TASKS) == ['ham10000', 'leaves', 'neu'], list(TASKS)\n"
             "labels = np.array([0, 1] * 20)\n"
             "logits = np.eye(2)[labels] * 2 + np.random.default_rng(0).normal(0, 1, (40, 2))\n"
             "rule, _ = DecisionRule.fit(logits, labels, TASKS['leaves'].codes, TASKS['leaves'].high_risk_codes)\n"
             "task = TASKS['leaves']\n"
             "print(task.verdict({'rust': 0.9, 'healthy': 0.1}, 'rust', ['rust'], rule.thresholds, task).headline)\n")
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "Found: Rust"  # the task's own words
    help_text = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=120).stdout
    assert "{ham10000,leaves,neu,dermoscopy,steel}" in help_text
