"""The Predictor: one image's way to an answer, and then to its explanation.

    Predictor.analyse(image, target=None, method=GRAD_CAM, tile=None, patient=None) -> Analysis
      prepare  check the file → RGB (images.py); the model folder's preprocessing (colour.py);
               the whole image or its tiles (tiles.py) → the model's input (transforms.model_input);
               for a task of skin, the skin tone estimated around the lesion (skintone.py)
      forward  one pass of the answering network (models/ensemble.py) → logits; the same pass
               records the primary model's features for the trust parts (trust/) and its last
               stage's output, from which Grad-CAM draws (explain.GradCam)
      answer   with a patient's record (age, sex, site: patient.py), its evidence added to the
               logits and its own rule (models/record.py); calibrated probabilities → the decided
               class, decided once → the 90% prediction set → the trust parts (the modality and
               familiarity checks, the similar cases) → the task's verdict (a refusal; for an
               unfamiliar image, a cautious one)
      explain  the heat-map of the decided (or asked) class: Grad-CAM backpropagates the
               answer's own pass through the head; Integrated Gradients and Occlusion run their
               own passes; a long
               image's tile maps are stitched into one, and its answer is the worst tile's

`analyse_many` answers many prepared images in batched passes, without heat-maps (the batch
path and the command line). The passes without a heat-map run on ONNX Runtime when the folder
ships an ONNX export (`engine`: models/onnx.py), else on the CPU as a frozen TorchScript graph
(models/frozen.py); both return the last stage's output too, so that a Grad-CAM map needs
only the head again, in PyTorch (an export without that output: a watched eager pass). The
other maps' passes are eager PyTorch's. The
heat-map, the input check and the similar cases are the primary model's (the folder's own) also
when an ensemble answers. Presentation is the app's.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .analysis import Analysis, Prepared
from .colour import apply as preprocess
from .explain import GRAD_CAM, METHODS, GradCam, Watched, attribution_map, heatmap
from .images import ImageInput, InputError, decode
from .models.ensemble import Ensemble, load_ensemble
from .models.frozen import FrozenNet
from .models.hub import download, looks_like_repo_id
from .models.onnx import ACTIVATION, OnnxNet, feature_names, runtime_for
from .models.record import PatientModel
from .models.spec import ModelSpec
from .patient import Patient
from .skintone import estimate
from .tasks import get_task
from .tasks.verdicts import caution, refused
from .tiles import TILE_CHUNK, split, where, worst_tile
from .transforms import model_input
from .trust import Assessment, Trust
from .trust.gallery import CASES_SHOWN, Case

Features = dict[str, torch.Tensor] | None
UNFAMILIAR_KEY = "unfamiliar"  # config.json: how the model measured on images unlike its training images


class Predictor:
    """The answering network `net` (a model folder's model, or an Ensemble of several models and
    views), the folder's spec (task, classes, input, decision rule) and its trust parts."""

    def __init__(self, net: torch.nn.Module | Ensemble, spec: ModelSpec, folder: str | Path | None = None,
                 device: str | torch.device = "cpu", engine: str = "auto"):
        self.device = torch.device(device)
        net = net if isinstance(net, Ensemble) else Ensemble([net])
        # channels_last: about twice the CPU throughput of the default layout for B0
        self.net = net.to(self.device, memory_format=torch.channels_last).eval()
        for p in self.net.parameters():  # Grad-CAM needs gradients of activations only
            p.requires_grad_(False)
        self.spec, self.task, self.codes, self.rule = spec, spec.task, list(spec.codes), spec.rule
        self.patient_model = PatientModel.from_config(spec.config)  # None: the image alone answers
        self.folder = Path(folder) if folder is not None else None  # the card and plots live there
        self.trust = Trust.load(self.folder, spec.config, self.codes, self.net)
        # what an answer for an image unlike the training images says first, with the folder's figure
        self.caution = caution(self.task, (spec.config.get(UNFAMILIAR_KEY) or {}).get("measured"))
        self.grad_cam = GradCam(self.primary)
        # the passes without a heat-map: on ONNX Runtime when the folder ships it (auto) or asked
        # (onnx), else on the CPU a frozen TorchScript graph of the same network (torch), or eager
        self.runtime = runtime_for(self.folder, spec.config, engine) if self.device.type == "cpu" or \
            engine == "onnx" else None
        if self.runtime is None and self.device.type == "cpu" and engine != "eager":
            self.runtime = FrozenNet(self.net, self.trust, self.grad_cam, feature_names(self), spec.input_size)
        self.engine = "onnx" if isinstance(self.runtime, OnnxNet) else "torch" if self.runtime else "eager"

    @property
    def primary(self) -> torch.nn.Module:
        """The folder's own model: the one the heat-map explains and the trust parts read."""
        return self.net.primary

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, device: str = "cpu",
                        task: str | None = None, engine: str = "auto") -> "Predictor":
        """`source`: a model folder, a Hub repo id ("user/name", cached copies work offline), or
        None for the bundled model of `task` (the default task when None). `engine`: "auto" (ONNX
        Runtime when the folder ships an export, else PyTorch), "torch" (on the CPU a frozen
        TorchScript graph), "eager" (PyTorch's modules as they are) or "onnx"."""
        folder = Path(source) if source is not None else get_task(task).model_folder
        if source is not None and not folder.exists() and looks_like_repo_id(str(source)):
            folder = download(str(source))
        net, spec = load_ensemble(folder)
        return cls(net, spec, folder=folder, device=device, engine=engine)

    def prepare(self, image: ImageInput, tile: bool | None = None, keep_image: bool = False) -> Prepared:
        """Check and decode `image`, and make the model's input: its tiles when tiling is on
        (None: the task's default) and the image is long enough, else the whole image. The
        decoded image is dropped unless `keep_image`: a batch holds only model inputs."""
        rgb, pixels = decode(image)  # what the page shows; the model sees it through its own preprocessing
        views, boxes = split(preprocess(rgb, self.spec.preprocessing), self.task.tile_large_images if tile is None
                             else tile)
        return Prepared(model_input(views, self.spec, self.device), rgb.shape[:2], boxes, rgb if keep_image else None,
                        pixels, estimate(rgb) if self.task.skin else None)

    def patient(self, age: object = None, sex: object = None, site: object = None) -> Patient | None:
        """The record as a form or client sends it, checked against the sites the model knows
        (InputError); None when no field is given or the model answers from the image alone."""
        if self.patient_model is None:
            return None
        patient = Patient.parse(age, sex, site, self.patient_model.sites)
        return patient if patient.given else None

    def analyse(self, image: ImageInput, *, target: str | None = None, method: str | None = GRAD_CAM,
                tile: bool | None = None, patient: Patient | None = None) -> Analysis:
        """The answer for one image (with `patient`'s record when given and the model has a
        record model), then the heat-map of `method` (None: no heat-map) for
        `target` (None: the decided class); a long image by its tiles (`prepare`), with a
        stitched Grad-CAM map. InputError for a bad image, class or method."""
        if target is not None and target not in self.codes:
            raise InputError(f"unknown class {target!r}; choose one of {', '.join(self.codes)}")
        if method is not None and method not in METHODS:
            raise InputError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")
        prepared = self.prepare(image, tile, keep_image=True)
        drawn = None if method is None else GRAD_CAM if prepared.boxes else method  # tiles: Grad-CAM
        # the answer's pass feeds the map: its last-stage output when the runtime returns it, else
        # an eager pass watched for Grad-CAM
        from_runtime = self.runtime is not None and ACTIVATION in self.runtime.names
        watch = drawn == GRAD_CAM and not from_runtime and len(prepared.x) <= TILE_CHUNK
        with self.grad_cam.watch() if watch else torch.inference_mode() as watched:
            logits, features, activation = self._forward(prepared.x, torch_pass=watch)
            answer = replace(self._answer(prepared, logits, features, patient=patient), image=prepared.image)
        if drawn is None:
            return answer
        index = self.codes.index(target or answer.decided)
        return replace(answer, heatmap=self._heatmap(prepared, drawn, index, watched, activation),
                       target=self.codes[index], method=drawn)

    @torch.inference_mode()
    def analyse_many(self, prepared: Sequence[Prepared],
                     patients: Sequence[Patient | None] | None = None) -> list[Analysis]:
        """Answers without heat-maps: the whole images in one forward pass, each tiled image in
        passes of TILE_CHUNK tiles; each with its patient's record when `patients` gives one."""
        patients = list(patients) if patients is not None else [None] * len(prepared)
        whole = [p for p in prepared if p.boxes is None]
        logits, features, _ = self._forward(torch.cat([p.x for p in whole])) if whole else (None, None, None)
        assessed = self.trust.assess(features, range(len(whole)))  # the batch's rows at once
        answers, row = [], 0
        for p, patient in zip(prepared, patients):
            if p.boxes is None:
                answers.append(self._answer(p, logits[row:row + 1], None, assessed[row], patient))
                row += 1
            else:
                answers.append(self._answer(p, *self._forward(p.x)[:2], patient=patient))
        return answers

    def _forward(self, x: torch.Tensor, torch_pass: bool = False) -> tuple[torch.Tensor, Features,
                                                                          torch.Tensor | None]:
        """The answering network's logits of a stack of views or tiles (in passes of TILE_CHUNK),
        the primary model's features of the same passes and, when the runtime returns it, its
        last-stage output (else None); on the runtime (ONNX Runtime, a frozen graph) unless
        there is none or `torch_pass` (a watched Grad-CAM pass: eager)."""
        if self.runtime is not None and not torch_pass:
            parts = [self.runtime(chunk) for chunk in x.split(TILE_CHUNK)]
            features = {name: torch.cat([f[name] for _, f in parts]) for name in parts[0][1]} if parts[0][1] else {}
            activation = features.pop(ACTIVATION, None)
            return torch.cat([logits for logits, _ in parts]), features or None, activation
        with self.trust.recording():
            logits = torch.cat([self.net(chunk) for chunk in x.split(TILE_CHUNK)])
            return logits, self.trust.features(last=True), None

    def _answer(self, prepared: Prepared, logits: torch.Tensor, features: Features,
                assessment: Assessment | None = None, patient: Patient | None = None) -> Analysis:
        """One image's logits and features (one row, or one per tile) → with `patient`'s record,
        its evidence added and the record's rule, else the image's rule → calibrated probabilities,
        the decided class (the only place it is decided), the prediction set, the trust parts'
        findings (`assessment` when a batch assessed its rows already) and the verdict. A tiled
        image answers with its worst tile, checked as that tile."""
        logits = logits.detach().float().cpu().numpy()
        used = patient if patient is not None and patient.given and self.patient_model is not None else None
        rule = self.rule if used is None else self.patient_model.rule
        probs = rule.probabilities(logits if used is None else self.patient_model.fuse(logits, [used]))
        worst = worst_tile(probs)
        probabilities = {code: float(p) for code, p in zip(self.codes, probs[worst])}
        decided = self.codes[int(rule.decide(probs[worst]))]
        in_set = [c for c, inside in zip(self.codes, rule.prediction_set(probs[worst])) if inside]
        trust = assessment if assessment is not None else self.trust.assess(features, [worst])[0]
        region = prepared.boxes[worst] if prepared.boxes else None
        if not trust.known:
            verdict = refused(self.task, trust.check_score, trust.check_threshold)
        else:
            verdict = self.task.verdict(probabilities, decided, in_set, rule.thresholds, self.task,
                                        None if trust.familiar else self.caution)
            if region is not None:
                verdict = replace(verdict, detail=f"{verdict.detail} {where(region, len(prepared.boxes))}")
        return Analysis(prepared.image, probabilities, decided, verdict, in_set, region=region,
                        tiles=len(prepared.boxes or ()), skin_ita=prepared.skin_ita, patient=used, **vars(trust))

    def _heatmap(self, prepared: Prepared, method: str, index: int, watched: Watched | None,
                 activation: torch.Tensor | None) -> np.ndarray:
        """The map of `method` for class `index`: Grad-CAM's from the answer's own pass (its
        last-stage `activation` from the runtime, or the watched eager pass), else in passes of
        its own."""
        if method == GRAD_CAM and activation is not None:
            maps = self.grad_cam.from_activation(activation, index)
        elif watched is not None:
            maps = watched.maps(index)
        elif prepared.boxes is not None:
            maps = torch.cat([self.grad_cam(chunk, index) for chunk in prepared.x.split(TILE_CHUNK)])
        else:
            maps = attribution_map(self.primary, prepared.x, method, index)
        return heatmap(maps, prepared.size, prepared.boxes)

    def similar(self, image: ImageInput, k: int = CASES_SHOWN, tile: bool | None = None) -> list[Case]:
        """The k training images of the reference gallery nearest to `image` in the model's feature
        space, most similar first; none for an image that fails the input check, or no gallery."""
        return self.trust.cases(self.analyse(image, method=None, tile=tile).similar[:k])

    def predict(self, image: ImageInput, patient: Patient | None = None) -> dict[str, float]:
        """Calibrated probability of every class (summing to 1) of the whole image (with
        `patient`'s record when given)."""
        return self.analyse(image, method=None, tile=False, patient=patient).probabilities
