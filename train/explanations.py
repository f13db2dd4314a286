"""How far each explanation method can be trusted, measured on test images (python -m
train.evaluate writes it into metrics.json["explanations"]; the card renders it).

- Localisation: the share of the map's energy inside the task's annotation (HAM10000 lesion
  masks, NEU defect boxes) and how often its peak is inside, for the trained model and for the
  same architecture with random weights.
- Faithfulness (Petsiuk et al. 2018): deletion — the explained class's probability as the most
  important pixels are replaced by the mean colour (zeros after normalisation), in STEPS steps;
  insertion — as they are restored into a blurred copy. Area under each curve (deletion: lower
  is better; insertion: higher), against the same curves for a random pixel order.
- Sanity (Adebayo et al. 2018): cascading randomisation of the weights from the top layer
  down; Spearman rank correlation of each map with the trained model's. A map that still
  correlates above SANITY_FAIL_RHO once every layer is random does not depend on what the
  model learned: the method is flagged.
All at the model's input resolution, on a fixed sample of the test split (every k-th image).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr
from torchvision.transforms.functional import gaussian_blur

from skinlesion.data import read_rgb
from skinlesion.explain import METHODS, SHIPPED, Settings, attribution_map, energy_inside, peak_inside
from skinlesion.models.network import create_model
from skinlesion.models.spec import ModelSpec
from skinlesion.predictor import Predictor
from skinlesion.transforms import model_input

STEPS = 16
SANITY_FAIL_RHO = 0.5
SAMPLE = 50           # images for localisation and faithfulness
SANITY_SAMPLE = 8     # images for the (costly) cascading randomisation


def input_map(model: torch.nn.Module, x: torch.Tensor, method: str, index: int,
              settings: Settings = SHIPPED) -> torch.Tensor:
    """The method's map for class `index` at the model's input resolution (S×S)."""
    cam = attribution_map(model, x, method, index, settings)
    return torch.nn.functional.interpolate(cam.float(), x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]


def curves(model: torch.nn.Module, x: torch.Tensor, order: torch.Tensor, index: int, temperature: float
           ) -> tuple[float, float]:
    """Areas under the deletion and insertion curves for pixels taken in `order`."""
    size = x.shape[-1] * x.shape[-2]
    blurred = gaussian_blur(x, kernel_size=31, sigma=10.0)
    masks = torch.zeros(STEPS + 1, 1, size)
    for k in range(STEPS + 1):
        masks[k, 0, order[:round(k * size / STEPS)]] = 1
    masks = masks.view(STEPS + 1, 1, *x.shape[-2:])
    deleted = x * (1 - masks)
    inserted = blurred * (1 - masks) + x * masks
    with torch.inference_mode():
        probs = torch.cat([model(batch.contiguous(memory_format=torch.channels_last)) for batch in
                           torch.cat([deleted, inserted]).split(STEPS + 1)]).div(temperature).softmax(1)[:, index]
    area = lambda p: float(torch.trapezoid(p, dx=1 / STEPS))  # noqa: E731
    return area(probs[:STEPS + 1]), area(probs[STEPS + 1:])


def faithfulness_and_localisation(predictor: Predictor, images: list[tuple[np.ndarray, np.ndarray | None]],
                                  random_model: torch.nn.Module, seed: int = 0) -> dict:
    """Per method: deletion / insertion areas (map and random order), localisation for the
    trained and the random model, and the seconds per image."""
    rng = torch.Generator().manual_seed(seed)
    results = {m: {"deletion": [], "insertion": [], "deletion_random": [], "insertion_random": [],
                   "energy_inside": [], "peak_inside": [], "energy_inside_random_weights": [],
                   "peak_inside_random_weights": [], "seconds": []} for m in METHODS}
    for rgb, mask in images:
        x = model_input([rgb], predictor.spec)
        with torch.inference_mode():
            index = int(predictor.rule.decide(predictor.rule.probabilities(predictor.primary(x).numpy()))[0])
        for method in METHODS:
            r = results[method]
            started = time.perf_counter()
            heat = input_map(predictor.primary, x, method, index)
            r["seconds"].append(time.perf_counter() - started)
            for name, order in (("", heat.flatten().argsort(descending=True)),
                                ("_random", torch.randperm(heat.numel(), generator=rng))):
                deletion, insertion = curves(predictor.primary, x, order, index, predictor.rule.temperature)
                r["deletion" + name].append(deletion)
                r["insertion" + name].append(insertion)
            if mask is not None:
                for suffix, model in (("", predictor.primary), ("_random_weights", random_model)):
                    m = heat if suffix == "" else input_map(model, x, method, index)
                    small = np.asarray(Image.fromarray(mask).resize(tuple(m.shape[::-1]), Image.NEAREST))
                    share = energy_inside(m.numpy(), small)
                    if share is not None:
                        r["energy_inside" + suffix].append(share)
                    r["peak_inside" + suffix].append(peak_inside(m.numpy(), small))
    return {m: {k: (float(np.mean(v)) if v else None) for k, v in r.items()} for m, r in results.items()}


def randomised_layers(model: torch.nn.Module) -> list[tuple[str, list[torch.nn.Module]]]:
    """Top layer first: the classifier, the head conv, each block stage from the last, the stem."""
    stages = [("classifier", [model.get_classifier()]), ("conv_head", [model.conv_head, model.bn2])]
    stages += [(f"blocks.{i}", [model.blocks[i]]) for i in reversed(range(len(model.blocks)))]
    return stages + [("conv_stem", [model.conv_stem, model.bn1])]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho; 0 when either map is constant (it keeps nothing of the other)."""
    return 0.0 if a.std() == 0 or b.std() == 0 else float(spearmanr(a, b)[0])


def cascading_randomisation(predictor: Predictor, images: list[np.ndarray], seed: int = 0) -> dict:
    """Per method, the mean Spearman correlation of the map with the trained model's after
    randomising each layer from the top down (cumulative)."""
    torch.manual_seed(seed)
    model = copy.deepcopy(predictor.primary)
    xs = [model_input([rgb], predictor.spec) for rgb in images]
    with torch.inference_mode():
        indices = [int(predictor.primary(x).argmax()) for x in xs]
    original = {m: [input_map(model, x, m, i).flatten().numpy() for x, i in zip(xs, indices)] for m in METHODS}
    depths, rho = [], {m: [] for m in METHODS}
    for name, modules in randomised_layers(model):
        for module in modules:  # re-initialised as at creation: random convolutions, fresh batch norms
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
        depths.append(name)
        for m in METHODS:
            rho[m].append(float(np.mean([rank_correlation(o, input_map(model, x, m, i).flatten().numpy())
                                         for o, x, i in zip(original[m], xs, indices)])))
    return {m: {"depths": depths, "spearman": r, "fails": bool(abs(r[-1]) > SANITY_FAIL_RHO)} for m, r in rho.items()}


def explanation_report(model: torch.nn.Module, spec: ModelSpec, records, data_root, sample: int = SAMPLE,
                       sanity_sample: int = SANITY_SAMPLE) -> dict | None:
    """Everything above for a model, on every k-th test record (annotations where the task has them)."""
    if not records:
        return None
    step = max(1, len(records) // sample)
    chosen = records[::step][:sample]
    predictor = Predictor(model, spec, device=next(model.parameters()).device)
    images = []
    for record in chosen:
        rgb = read_rgb(record.path)
        mask = spec.task.annotation(data_root, record.image_id, rgb.shape[:2]) if data_root else None
        images.append((rgb, mask if mask is not None and mask.any() else None))
    torch.manual_seed(0)  # the same random-weights model in every run, so the figures repeat
    random_model = create_model(spec.num_classes, architecture=spec.architecture, image_size=spec.input_size)
    torch.nn.init.normal_(random_model.get_classifier().weight, std=0.01)  # a zero head has no gradient
    random_model.eval().requires_grad_(False)
    annotated = [m for _, m in images if m is not None]
    return {"n": len(images), "sanity_n": min(sanity_sample, len(images)), "steps": STEPS,
            "annotation": spec.task.annotation_name if annotated else None,
            "annotated_area": float(np.mean([m.mean() for m in annotated])) if annotated else None,
            "methods": {m: {**r, "sanity": s} for (m, r), s in zip(
                faithfulness_and_localisation(predictor, images, random_model).items(),
                cascading_randomisation(predictor, [rgb for rgb, _ in images[:sanity_sample]]).values())}}
