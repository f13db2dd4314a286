from skinlesion.classes import (BENIGN, HIGH_RISK, MALIGNANT, PRE_MALIGNANT, CLASS_TABLES, class_codes,
                                class_table, high_risk_codes)
import pytest


def test_ham10000_table_is_complete():
    table = class_table("ham10000")
    assert [c.code for c in table] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert {c.code: c.risk for c in table} == {
        "akiec": PRE_MALIGNANT, "bcc": MALIGNANT, "mel": MALIGNANT,
        "bkl": BENIGN, "df": BENIGN, "nv": BENIGN, "vasc": BENIGN}
    assert all(c.name and c.description for c in table)
    assert len({c.colour for c in table}) == len(table)
    assert all(c.colour.startswith("#") and len(c.colour) == 7 for c in table)


def test_high_risk_classes_come_from_the_risk_groups():
    assert high_risk_codes() == ["akiec", "bcc", "mel"]
    assert set(HIGH_RISK) == {MALIGNANT, PRE_MALIGNANT}


def test_every_task_has_unique_codes_and_unknown_task_is_named():
    for task in CLASS_TABLES:
        assert len(set(class_codes(task))) == len(class_codes(task))
    with pytest.raises(ValueError, match="unknown task 'x'.*ham10000"):
        class_table("x")
