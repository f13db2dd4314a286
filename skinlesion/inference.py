"""The Predictor: one image's way to an answer, in one place.

    Predictor.analyse(image, target=None, method=GRAD_CAM, tile=None) -> Analysis
      prepare: check the file → RGB (images.py), the whole image or its tiles (tiles.py) → input
      one forward pass → logits (the heat-map's own pass when one is asked for: explain.py)
      calibrated probabilities → the decided class, decided once → the task's verdict (verdicts.py)
      the heat-map of `method` for `target` (default: the decided class); a long image's tiles
      are stitched into one map, and the answer is the worst tile's

`analyse_many` is the same without heat-maps, for many prepared images in batched passes (the
batch path and the command line); `predict` gives the probabilities alone, optionally averaged
over mirror images. Presentation (the overlay, its opacity, HTML) is the app's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .explain import GRAD_CAM, METHODS, attribution_map, grad_cam, last_stage, upsample_heatmap
from .hub import download, looks_like_repo_id
from .images import ImageInput, InputError, load_image
from .model import load_model_folder
from .spec import ModelSpec
from .tasks import get_task
from .tiles import TILE_CHUNK, checked_boxes, chunks, crops, stitched, where, worst_tile, worth_tiling
from .transforms import eval_transform, normalize
from .verdicts import Verdict

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass
class Analysis:
    image: np.ndarray | None           # the checked RGB input, H×W×3 uint8 (None from analyse_many)
    probabilities: dict[str, float]    # calibrated, every class, summing to 1; a tiled image: the worst tile's
    decided: str                       # the decision rule's class
    verdict: Verdict                   # in the task's words
    heatmap: np.ndarray | None = None  # H×W float32 in 0..1: `method`'s evidence for `target`; None: not asked
    target: str | None = None          # the class the heat-map explains
    method: str | None = None          # the method behind the heat-map (explain.METHODS)
    region: Box | None = None          # a tiled image: the worst tile
    tiles: int = 0                     # the number of tiles; 0: the whole image in one view
    # The input check, the prediction set and similar cases join here as they are built.


@dataclass
class Prepared:
    """A checked image as the model's input: one view, or its tiles."""
    x: torch.Tensor                    # n×C×H×W, normalised, on the device
    size: tuple[int, int]              # the image's height and width
    boxes: list[Box] | None = None     # the tiles' boxes; None: the whole image
    image: np.ndarray | None = None    # the RGB image, kept when a heat-map will need it


class Predictor:
    """A loaded model and its spec (spec.py: task, classes, input size, normalisation, the
    decision rule), read once from the model folder's config.json."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, folder: str | Path | None = None,
                 device: str | torch.device = "cpu", tta: bool = False):
        self.device = torch.device(device)
        # channels_last: about twice the CPU throughput of the default layout for B0
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        for p in self.model.parameters():  # Grad-CAM needs gradients of activations only
            p.requires_grad_(False)
        self.spec, self.tta = spec, tta
        self.folder = Path(folder) if folder is not None else None  # the card and plots live there
        self.task, self.codes, self.rule = spec.task, list(spec.codes), spec.rule
        self._transform = eval_transform(spec.input_size)
        self.layer = last_stage(self.model)

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, device: str = "cpu",
                        tta: bool = False, task: str | None = None) -> "Predictor":
        """`source`: a model folder, a Hub repo id ("user/name", cached copies work offline), or
        None for the bundled model of `task` (the default task when None)."""
        folder = Path(source) if source is not None else get_task(task).model_folder
        if source is not None and not folder.exists() and looks_like_repo_id(str(source)):
            folder = download(str(source))
        model, spec = load_model_folder(folder)
        return cls(model, spec, folder=folder, device=device, tta=tta)

    def to_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Checked RGB arrays → the model's normalised input batch (resized as in training)."""
        batch = torch.stack([self._transform(image=rgb)["image"] for rgb in images]).to(self.device)
        return normalize(batch, self.spec.mean, self.spec.std).contiguous(memory_format=torch.channels_last)

    def prepare(self, image: ImageInput, tile: bool | None = None, keep_image: bool = False) -> Prepared:
        """Check and decode `image`, and make the model's input: its tiles when tiling is on
        (None: the task's default) and the image is long enough, else the whole image. The
        decoded image is dropped unless `keep_image`: a batch holds only model inputs."""
        rgb = load_image(image)
        height, width = rgb.shape[:2]
        tiled = self.task.tile_large_images if tile is None else tile
        boxes = checked_boxes(width, height) if tiled and worth_tiling(width, height) else None
        x = self.to_batch(crops(rgb, boxes) if boxes else [rgb])
        return Prepared(x, (height, width), boxes, rgb if keep_image else None)

    def analyse(self, image: ImageInput, *, target: str | None = None, method: str | None = GRAD_CAM,
                tile: bool | None = None) -> Analysis:
        """The answer for one image and the heat-map of `method` (None: no heat-map) for `target`
        (None: the decided class); a long image by its tiles (`prepare`), with a stitched
        Grad-CAM map. InputError for a bad image, class or method."""
        if target is not None and target not in self.codes:
            raise InputError(f"unknown class {target!r}; choose one of {', '.join(self.codes)}")
        if method is not None and method not in METHODS:
            raise InputError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        prepared = self.prepare(image, tile, keep_image=True)
        if method is None:
            return replace(self.analyse_many([prepared])[0], image=prepared.image)
        found: dict = {}

        def explained(logits: torch.Tensor) -> int:  # the answer, decided once, picks the class to explain
            found["answer"] = self._answer(prepared, logits)
            return self.codes.index(target or found["answer"].decided)

        if prepared.boxes is None:
            attribution, _, index = attribution_map(self.model, self.layer, prepared.x, method, explained)
            heatmap = upsample_heatmap(attribution, prepared.size)
        else:
            method, cams, index = GRAD_CAM, *self._tile_cams(prepared.x, explained)
            heatmap = stitched(cams, prepared.boxes, prepared.size)
        answer = found["answer"]
        return replace(answer, image=prepared.image, heatmap=heatmap, target=self.codes[index], method=method,
                       verdict=self._verdict(answer, method))

    @torch.inference_mode()
    def analyse_many(self, prepared: Sequence[Prepared]) -> list[Analysis]:
        """Analyses without heat-maps: the whole images in one forward pass, each tiled image
        in passes of TILE_CHUNK tiles."""
        whole = [p for p in prepared if p.boxes is None]
        logits = iter(self.model(torch.cat([p.x for p in whole])) if whole else [])
        return [self._answer(p, next(logits)[None] if p.boxes is None else
                             torch.cat([self.model(x) for x in chunks(p.x)])) for p in prepared]

    def _tile_cams(self, x: torch.Tensor, explained) -> tuple[torch.Tensor, int]:
        """Every tile's Grad-CAM of the class `explained` picks from all tiles' logits: from the
        same pass when the tiles fit in one chunk, else the answer first, then the maps."""
        if len(x) <= TILE_CHUNK:
            cams, _, index = grad_cam(self.model, self.layer, x, explained)
            return cams, index
        with torch.inference_mode():
            index = explained(torch.cat([self.model(chunk) for chunk in chunks(x)]))
        return torch.cat([grad_cam(self.model, self.layer, chunk, index)[0] for chunk in chunks(x)]), index

    def _answer(self, prepared: Prepared, logits: torch.Tensor) -> Analysis:
        """One image's logits (one row, or one per tile) → calibrated probabilities, the decided
        class (the only place it is decided) and the verdict; a tiled image answers with its
        worst tile."""
        probs = self.rule.probabilities(logits.detach().float().cpu().numpy())
        worst = worst_tile(probs)
        probabilities = {code: float(p) for code, p in zip(self.codes, probs[worst])}
        decided = self.codes[int(self.rule.decide(probs[worst]))]
        region = prepared.boxes[worst] if prepared.boxes else None
        answer = Analysis(prepared.image, probabilities, decided, Verdict("", "", ""), region=region,
                          tiles=len(prepared.boxes or ()))
        return replace(answer, verdict=self._verdict(answer, None))

    def _verdict(self, answer: Analysis, method: str | None) -> Verdict:
        verdict = self.task.verdict(answer.probabilities, answer.decided, self.rule, self.task, method)
        if answer.region is None:
            return verdict
        return replace(verdict, detail=f"{verdict.detail} {where(answer.region, answer.tiles)}")

    @torch.inference_mode()
    def predict(self, image: ImageInput, tta: bool | None = None) -> dict[str, float]:
        """Calibrated probability of every class (summing to 1) of the whole image; with `tta`,
        averaged over the image and its horizontal and vertical mirror images."""
        x = self.to_batch([load_image(image)])
        if self.tta if tta is None else tta:
            x = torch.cat([x, x.flip(-1), x.flip(-2)])
        probs = self.rule.probabilities(self.model(x).float().cpu().numpy()).mean(0)
        return {code: float(p) for code, p in zip(self.codes, probs)}
