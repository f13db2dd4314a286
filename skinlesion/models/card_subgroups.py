"""The card's results by subgroup (python -m train.subgroups writes them into metrics.json):
one table per attribute on the test split, the skin-tone estimate's agreement, the plot."""
from __future__ import annotations

from ..skintone import ATTRIBUTE
from .markdown import f, table

SUBGROUPS_PNG = "subgroups.png"


def cell(figure: dict | None) -> str:
    """A figure with its interval, "value (low–high)"; "too few" when the group has too few positives."""
    if figure is None:
        return "too few"
    return f"{f(figure['value'])} ({f(figure['low'], 2)}–{f(figure['high'], 2)})"


def subgroup_tables(metrics: dict) -> str:
    found = metrics.get("subgroups")
    if not found:
        return ""
    if not found["attributes"]:
        return "\n### By subgroup\nThe data has no metadata to group its images by (age, sex, site, skin).\n"
    risky = list(metrics.get("thresholds", {}))
    parts = [f"\n### By subgroup (test split; 95% bootstrap intervals, {found['bootstrap']} resamples)\n"
             f"A group of fewer than {found['min_images']} images, or a sensitivity with fewer than "
             f"{found['min_positives']} positives, is counted, not measured (`python -m train.subgroups`). A group's "
             f"balanced accuracy averages the recall of the classes it holds at least {found['min_class']} images of: "
             "where that is one class alone, it is that class's recall.\n"]
    for attribute in found["attributes"]:
        rows = []
        for name, v in found["splits"]["test"][attribute].items():
            if v.get("too_few"):
                rows.append([name, v["n"], "too few images", *[""] * (len(risky) + 4)])
                continue
            rows.append([name, v["n"], " ".join(v["classes"]), cell(v["balanced_accuracy"]),
                         *(cell(v[f"{c}_sensitivity"]) for c in risky),
                         cell(v["set_coverage"]), f(v["set_size"]["value"], 2),
                         f(v["check_pass_rate"]["value"])])
        parts.append(f"\n**{attribute}**\n\n" + table(
            ["group", "images", f"classes with ≥ {found['min_class']} images", "balanced accuracy",
             *(f"{c} sensitivity" for c in risky),
             "90% set coverage",
             "set size", "input check passed"], rows))
    agreement = found.get("ita_agreement")
    if agreement:
        parts.append(
            "\nSkin tone is estimated: ITA° of the skin outside the lesion's mask, in the groups of Del Bino & "
            "Bernerd (2013). A dermatoscope's light and the lesion's surround move it, so it is a rough guide. "
            "The app's estimate without a mask (the image's outer ring) falls in the same group as the "
            f"mask-based one for {agreement['same_group']:.1%} of the test images and within one group for "
            f"{agreement['within_one_group']:.1%} (mean difference {agreement['mean_abs_difference_deg']:.1f}°).\n")
    return "".join(parts) + f"\n![results by subgroup]({SUBGROUPS_PNG})\n"


def measured_note(metrics: dict | None) -> str:
    """The page's ethics note on who the model works for, in the measured numbers (Markdown;
    empty without subgroup figures)."""
    found = (metrics or {}).get("subgroups")
    if not found or ATTRIBUTE not in found["attributes"]:
        return ""
    trained = found["training_counts"][ATTRIBUTE]
    total = sum(trained.values())
    test = found["splits"]["test"]
    tones = test[ATTRIBUTE]
    share = ", ".join(f"{trained.get(g, 0) / total:.1%} {g}" for g in tones if g != "unknown")
    unmeasured = [f"{v['n']} {g}" for g, v in tones.items() if v.get("too_few") and g != "unknown"]
    measured = {g: v for g, v in tones.items() if not v.get("too_few")}
    every = len(metrics.get("labels", [])) or None

    def over(v: dict) -> str:
        return "" if len(v["classes"]) == every else f" (over {', '.join(v['classes'])} only)"

    ba = "; ".join(f"{g} {f(v['balanced_accuracy']['value'], 2)}{over(v)}" for g, v in measured.items())
    lines = [f"\n\n**Who it works for (measured, `python -m train.subgroups`).** By estimated skin tone (ITA°, "
             f"Del Bino groups) the training images are {share}."]
    if unmeasured:
        lines.append(f" The test split holds {', '.join(unmeasured)} images: too few to measure, so the "
                     "model's accuracy on such skin is **unknown**.")
    lines.append(f" Balanced accuracy on the test split where a group is large enough: {ba}.")
    risky = [c for c in metrics.get("thresholds", {}) if any(
        (v.get(f"{c}_sensitivity") or {}).get("value") is not None
        for a in found["attributes"] for v in test[a].values() if not v.get("too_few"))]
    for code in risky:
        points = [(v[f"{code}_sensitivity"]["value"], f"{a} {g}") for a in found["attributes"]
                  for g, v in test[a].items() if not v.get("too_few") and v.get(f"{code}_sensitivity")]
        low, where = min(points)
        lines.append(f" {code} sensitivity at the stored threshold: {f(low, 2)} at its lowest ({where}), "
                     f"over {len(points)} groups with at least {found['min_positives']} positives.")
    return "".join(lines) + " The Model tab has every group's figures.\n"
