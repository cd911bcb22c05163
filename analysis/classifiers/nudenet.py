"""NudeNet 3.x detector: batched ONNX inference, every raw detection kept.

Pixels come from analysis.classifiers.images (PIL, RGB). NudeNet's own path-based reader uses
cv2.imread (BGR) and its scores depend on channel order, so we hand it the BGR array cv2 would
have produced: our detections equal `NudeDetector().detect(path)` for the same file.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from analysis.classifiers.registry import Judge, JudgeOptions
from analysis.errors import AuditError

NAME = "nudenet"
MIN_SCORE = 0.2  # NudeNet's own candidate cut-off
NMS_SCORE, NMS_IOU = 0.25, 0.45  # NudeNet's own NMS settings


@dataclass
class Prepared:
    """One image's network input and the geometry needed to map boxes back."""

    blob: np.ndarray
    meta: tuple[float, float, int, int, int, int] = field(default_factory=tuple)


@dataclass
class NudeNetDetector:
    """Wraps nudenet.NudeDetector's ONNX session; `model_path` selects e.g. the 640m model."""

    model_path: Path | None = None
    resolution: int = 320
    threads: int = 2

    def __post_init__(self) -> None:
        import nudenet
        from nudenet import nudenet as nn_module

        default = Path(nudenet.__file__).parent / "320n.onnx"
        path = Path(self.model_path) if self.model_path else default
        if not path.is_file():
            raise AuditError(f"NudeNet model file {path} does not exist")
        if self.model_path and "640" in path.name and self.resolution == 320:
            self.resolution = 640
        self.path = path
        self._local = threading.local()
        try:
            self.session = self._new_session(self.threads)
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            reason = " ".join(str(exc).split())[:160]
            raise AuditError(f"NudeNet model {path} is not a usable ONNX model: {reason}") from None
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        side = model_input.shape[-1] if len(model_input.shape) == 4 else None
        if isinstance(side, int) and side > 0:  # the model's own input size (320n, 640m)
            self.resolution = side
        self._read = nn_module._read_image
        from analysis.store.hashing import sha256_file

        self.sha256 = sha256_file(path)
        self.labels = list(nn_module.__dict__["__labels"])

    def _new_session(self, threads: int) -> Any:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = threads
        return onnxruntime.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
        )

    def detect_one(self, image: Image.Image) -> list[dict[str, Any]]:
        """Detect in one image with this thread's own single-threaded session.

        Several worker threads each decoding and running their own session keep every core
        busy; that beats one session spreading a small network over threads.
        """
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._new_session(1)
        prepared = self.prepare(image)
        output = session.run(None, {self.input_name: prepared.blob})[0]
        return self._postprocess(output[0], prepared.meta)

    @property
    def provenance(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {
            "classifier": NAME,
            "model": self.path.name,
            "model_sha256": self.sha256,
            "resolution": self.resolution,
            "nudenet_version": version("nudenet"),
            "decode": "PIL -> RGB (EXIF-transposed) -> BGR array, as cv2.imread gives NudeNet",
        }

    def prepare(self, image: Image.Image) -> Prepared:
        """Network input for one RGB image (NudeNet's own letterbox and normalisation)."""
        rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # the same bytes as [:, :, ::-1], ~5x faster
        blob, x_ratio, y_ratio, x_pad, y_pad, width, height = self._read(bgr, self.resolution)
        return Prepared(blob, (x_ratio, y_ratio, x_pad, y_pad, width, height))

    def detect_prepared(self, batch: list[Prepared]) -> list[list[dict[str, Any]]]:
        """Run the network on a batch and decode every image's detections."""
        if not batch:
            return []
        outputs = self.session.run(None, {self.input_name: np.vstack([p.blob for p in batch])})[0]
        return [self._postprocess(outputs[j], p.meta) for j, p in enumerate(batch)]

    def detect(self, images: list[Image.Image]) -> list[list[dict[str, Any]]]:
        return self.detect_prepared([self.prepare(im) for im in images])

    def _postprocess(self, output: np.ndarray, meta: tuple) -> list[dict[str, Any]]:
        """NudeNet's post-processing, vectorised: same candidates, boxes, NMS and rounding."""
        _, _, x_pad, y_pad, width, height = meta
        rows = np.transpose(np.squeeze(output))
        scores_all = rows[:, 4:]
        best = scores_all.max(axis=1)
        keep = np.nonzero(best >= MIN_SCORE)[0]
        if keep.size == 0:
            return []
        class_ids = scores_all[keep].argmax(axis=1)
        scores = best[keep]
        x, y, w, h = (rows[keep, i] for i in range(4))
        x, y = x - w / 2, y - h / 2
        sx, sy = (width + x_pad) / self.resolution, (height + y_pad) / self.resolution
        x, y, w, h = x * sx, y * sy, w * sx, h * sy
        x = np.clip(x, 0, width)
        y = np.clip(y, 0, height)
        w = np.minimum(w, width - x)
        h = np.minimum(h, height - y)
        boxes = [
            [float(a), float(b), float(c), float(d)] for a, b, c, d in zip(x, y, w, h, strict=True)
        ]
        picked = cv2.dnn.NMSBoxes(boxes, [float(s) for s in scores], NMS_SCORE, NMS_IOU)
        return [
            {
                "class": self.labels[int(class_ids[i])],
                "score": float(scores[i]),
                "box": [int(v) for v in boxes[i]],
            }
            for i in np.asarray(picked).reshape(-1)
        ]


class NudeNetJudge(Judge):
    """NudeNet as a judge: every detection stored raw; a verdict per named rule
    (`rules.RULES`: which labels count, the cut and whether it is strict)."""

    name = NAME
    rule = "exposed-genitalia"
    prepares_in_workers = True
    takes_classify_rule = True

    def __init__(self, options: JudgeOptions) -> None:
        model = Path(options.nudenet_model) if options.nudenet_model else None
        if model is not None and not model.is_file():
            raise AuditError(f"--nudenet-model {model} does not exist")
        self.detector = NudeNetDetector(model, threads=options.threads)
        self.sha256 = self.detector.sha256
        self.provenance = self.detector.provenance

    @classmethod
    def rules(cls) -> tuple[str, ...]:
        from analysis.classifiers.rules import RULES

        return tuple(RULES)

    @classmethod
    def resolve_rule(cls, rule: str | None) -> str:
        from analysis.classifiers.rules import get_rule

        return get_rule(rule or cls.rule).name

    @classmethod
    def comparison_of(cls, rule: str) -> str | None:
        from analysis.classifiers.rules import get_rule

        return get_rule(rule).comparison

    @classmethod
    def default_threshold(cls, rule: str) -> float | None:
        from analysis.classifiers.rules import get_rule

        return get_rule(rule).threshold

    @classmethod
    def check_threshold(cls, threshold: float | None, rule: str) -> float | None:
        from analysis.classifiers.rules import check_threshold, get_rule

        r = get_rule(rule)
        return check_threshold(r.threshold if threshold is None else threshold, r)

    @classmethod
    def verdict_of(cls, rule: str, threshold: float | None) -> Callable[[str], bool]:
        from analysis.classifiers.rules import get_rule

        r = get_rule(rule)
        return lambda raw: r.verdict(json.loads(raw), threshold)

    def prepare(self, image: Image.Image) -> list[dict[str, Any]]:
        return self.detector.detect_one(image)

    def score(
        self, payloads: list[Any], rule: str, threshold: float | None
    ) -> list[tuple[Any, bool]]:
        from analysis.classifiers.rules import get_rule

        r = get_rule(rule)
        return [(dets, r.verdict(dets, threshold)) for dets in payloads]
