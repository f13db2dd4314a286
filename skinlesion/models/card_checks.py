"""The model card's input-check section: what is refused, answered and answered with caution, per
set (rendered from metrics.json by card.py; the Model tab shows the card)."""
from __future__ import annotations

from ..tasks import get_task
from .markdown import f, table

SET_COLUMNS = ["set", "images", "answered", "refused", "unfamiliar (answered with caution)",
               "balanced accuracy (answered)", "referred", "90% set coverage (answered)"]


def _referred(found: dict) -> str:
    return ", ".join(f"{c} {f(v)}" for c, v in (found.get("referred") or {}).items()) or "n/a"


def served_table(metrics: dict) -> str:
    """Each set as the app answers it (metrics.json `sources`), then each family of other images
    (`modality_check.families`, each refused by a fit that never saw it)."""
    sources = metrics.get("sources") or {}
    modality = metrics.get("modality_check") or {}
    if not sources and not modality:
        return ""
    rows = [[name, s["n"], f(s["answered"]), f(s["refused"]), f(s["unfamiliar"]), f(s["balanced_accuracy"]),
             _referred(s), f(s["set_coverage"])] for name, s in sources.items()]
    rows += [[f"{name} (not {get_task(metrics['task']).subject})", r["n"], f(r["answered"]), f(r["refused"]),
              f(r["unfamiliar"]), "", "", ""] for name, r in (modality.get("families") or {}).items()]
    return table(SET_COLUMNS, rows)


def checks_tables(metrics: dict) -> str:
    """The modality check (refuses), the familiarity check (cautions), and the table of sets."""
    task = get_task(metrics["task"])
    parts = []
    modality = metrics.get("modality_check")
    if modality:
        unseen = all(r.get("unseen_by_the_fit") for r in modality["families"].values())
        strong = "strongly_shifted_test_pass" in modality
        parts += [f"\n### Input checks: refused, answered, answered with caution\n"
                  f"**Modality check** (is this {task.subject} at all? If not, refused): a "
                  f"{modality['method']}; threshold {modality['threshold']:.3f}, set so that "
                  f"{modality.get('pass_rate_target', 0.99):.1%} of the validation "
                  f"images{' and their strongly shifted copies' if strong else ''} pass (validation images alone: "
                  f"{modality['val_pass']:.1%}). Test images passing: "
                  f"**{modality['test_pass']:.1%}**; under a mild acquisition shift "
                  f"{modality['shifted_test_pass']:.1%}"
                  + (f"; under strong ones (zoom, resolution, sharpness, tone, vignette, JPEG, colour, hair, "
                     f"rulers) {modality['strongly_shifted_test_pass']:.1%}. " if strong else ". ")
                  + ("Each family of other images below is refused by a fit that left that family out: "
                     "a figure on a kind of image the check never saw. " if unseen else "")
                  + (f"The training images of another source ({source['n']}), passed by a fit that left them out: "
                     f"{source['pass']:.1%}. " if (source := modality.get("unseen_source")) else "")
                  + "**Familiarity check** (is it like the training images? If not, answered with a caution "
                  "that quotes the figure under the table, and a verdict that leans to caution: never the "
                  "confident one; an image far past it is refused).\n\n"]
    parts.append(served_table(metrics))
    cost = metrics.get("unfamiliar")
    if cost and cost.get("measured"):
        parts.append(f"\nWhat an unfamiliar image costs, quoted in its caution: {cost['measured']}.\n")
    return "".join(parts)
