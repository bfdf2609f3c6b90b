"""The served model and the work done on it: batched generation under a safety policy, edits, and motion audits.

`ModelService.run` is the micro-batcher's handler and is only ever called from its one worker thread, which therefore
owns every torch module. What needs no model (the SMPL fit, base64 encoding) happens afterwards in `motion_payloads`,
on whichever thread wants the JSON, so the model thread goes straight on to the next batch.

Policies are applied by safemotion.safe_generation.SafeGenerator; this module only batches, audits and serialises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from safemotion.data.mocap_import import TARGET_FPS
from safemotion.decoding import SamplingConfig
from safemotion.edit import Editor, SourceMotion
from safemotion.generate import SECONDS_RANGE, VARIATIONS_RANGE, GenerationRequest, Generator, pick_device
from safemotion.motion import skeleton
from safemotion.motion.smpl import joints_to_smpl
from safemotion.safe_generation import Generated, SafeGenerator
from safemotion.serve.encoding import encode_array
from safemotion.unlearn.audit import audit_joints, check_audit_length, resample_joints
from safemotion.unlearn.record import safety_settings, unlearning_record


@dataclass(frozen=True)
class GenerationTask:
    """One request: a prompt with its variations, under a policy."""

    request: GenerationRequest
    policy: str


@dataclass(frozen=True)
class AuditTask:
    """Joint positions [T, 22, 3] (metres, Y-up) at `fps` to audit for removed codes."""

    joints: np.ndarray
    fps: float


@dataclass(frozen=True)
class EditTask:
    """An edit of a take (safemotion.edit): regenerate `frames`, extend by `seconds`, or in-between with `second`."""

    operation: str  # "edit", "extend" or "inbetween"
    source: SourceMotion
    prompt: str
    seed: int
    variations: int
    policy: str
    frames: list[tuple[int, int]] | None = None
    seconds: float | None = None
    at: str = "end"
    second: SourceMotion | None = None


class NotAuditable(ValueError):
    """The model has no removed codes, so there is nothing to audit a motion for."""


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA, else Apple MPS, else CPU; anything else as given."""
    if name == "auto" and not torch.cuda.is_available():
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
    return pick_device(name)


class ModelService:
    """A loaded model directory: the generator, its original-codebook twin for `allow`, and what it accepts."""

    def __init__(self, name: str, path: Path, generator: Generator):
        self.name = name
        self.path = path
        self.generator = generator
        self.safe = SafeGenerator(generator, path)
        self.editor = Editor(self.safe)
        self.removed_codes = self.safe.removed_codes
        self.info = self._describe()

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", threads: int | None = None,
             precision: str = "fp32") -> ModelService:
        """Load the model directory at `path` on `device` (auto: cuda, mps or cpu), transformers in `precision`."""
        if threads is not None:
            torch.set_num_threads(threads)
        path = Path(path)
        generator = Generator.from_dir(path, device=str(resolve_device(device)),
                                       sampling=SamplingConfig(precision=precision))
        return cls(path.name, path, generator)

    @property
    def device(self) -> str:
        """The torch device the model runs on."""
        return str(self.generator.device)

    def _describe(self) -> dict[str, Any]:
        config = self.generator.models.config
        record = unlearning_record(config)
        safety = safety_settings(config) if self.removed_codes else None
        max_seconds = min(SECONDS_RANGE[1], config.max_motion_length / config.fps)
        return {
            "name": self.name, "text_encoder": config.text_encoder, "precision": self.generator.sampling.precision,
            "fps": float(config.fps),
            "unit_length": config.unit_length, "codebook_size": config.vq.nb_code,
            "seconds_range": [SECONDS_RANGE[0], max_seconds],
            "variations_range": list(VARIATIONS_RANGE),
            "length_estimator": self.generator.chooses_length,
            "unlearning": None if record is None else {
                "method": record.method, "concept": record.concept, "removed_base_codes": len(self.removed_codes)},
            "safety_threshold": None if safety is None else safety.threshold,
            "safety_calibrated": None if safety is None else safety.calibrated,
        }

    # ------------------------------------------------------------------------------------------ worker thread

    def run(self, tasks: list[GenerationTask | AuditTask | EditTask]) -> list[Any]:
        """The batcher's handler: one result per task (a list of Generated, an AuditReport dict, or the ValueError
        that refused that one audit or edit, so it does not fail the rest of the batch)."""
        results: list[Any] = [None] * len(tasks)
        generations = [i for i, task in enumerate(tasks) if isinstance(task, GenerationTask)]
        if generations:
            for i, generated in zip(generations, self.generate([tasks[i] for i in generations])):
                results[i] = generated
        for i, task in enumerate(tasks):
            if isinstance(task, AuditTask):
                results[i] = _result_or_refusal(self.audit, task)
            elif isinstance(task, EditTask):
                results[i] = _result_or_refusal(self.edit, task)
        return results

    @torch.inference_mode()
    def generate(self, tasks: list[GenerationTask]) -> list[list[Generated]]:
        """All variations of every task, in one model batch per codebook (allow vs the others); SMPL fits later."""
        return self.safe.generate([task.request for task in tasks], [task.policy for task in tasks], smpl=False)

    @torch.inference_mode()
    def edit(self, task: EditTask) -> list[Generated]:
        """The reviewed variations of one edit; SMPL fits later."""
        common = {"seed": task.seed, "variations": task.variations, "policy": task.policy, "smpl": False}
        if task.operation == "inbetween":
            return self.editor.inbetween(task.source, task.second, task.seconds, task.prompt, **common)
        if task.operation == "extend":
            return self.editor.extend(task.source, task.seconds, task.prompt, at=task.at, **common)
        return self.editor.edit(task.source, task.frames, task.prompt, **common)

    @torch.inference_mode()
    def audit(self, task: AuditTask) -> dict[str, Any]:
        """Removed-code report of a motion (the AuditReport as a dict, without its file name)."""
        original = self.safe.original
        if original is None:
            raise NotAuditable(f"model {self.name!r} has no removed codes to look for; audit with a model made "
                               "by `safemotion unlearn lcr`")
        check_audit_length(len(task.joints), task.fps, "joints")
        joints = resample_joints(np.asarray(task.joints, dtype=np.float64), task.fps, TARGET_FPS)
        report = audit_joints(self.generator.models, original.models, joints, model=self.name,
                              source_fps=task.fps, screens=self.safe.screens).to_dict()
        report.pop("file")
        return report


# ---------------------------------------------------------------------------------------------- any thread

def _result_or_refusal(method: Callable[[Any], Any], task: Any) -> Any:
    """method(task), or the ValueError with which it refused this task's own input."""
    try:
        return method(task)
    except ValueError as err:
        return err


def motion_payloads(generated: list[Generated]) -> list[dict[str, Any]]:
    """The JSON form of generated motions: SMPL fit, base64 arrays, skeleton and safety (arrays withheld if blocked)."""
    return [_payload(item) for item in generated]


def _payload(item: Generated) -> dict[str, Any]:
    motion = item.motion
    payload: dict[str, Any] = {
        "prompt": item.prompt, "seed": item.seed, "variation": item.variation,
        "fps": None if motion is None else motion.fps, "frames": 0 if motion is None else motion.num_frames,
        "seconds": 0.0 if motion is None else motion.seconds,
        "length_from": "refused before generation" if motion is None else motion.length_from,
        "foot_cleanup": motion is not None and motion.foot_cleanup is not None,
        "joints": None, "smpl": None, "skeleton": None, "tokens": None,
        "safety": None if item.safety is None else item.safety.to_dict(),
        "seams": None if motion is None or motion.seams is None else motion.seams.to_dict(),
    }
    if item.blocked:
        return payload
    smpl = motion.smpl if motion.smpl is not None else joints_to_smpl(motion.joints, fps=motion.fps)
    payload.update(
        joints=encode_array(motion.joints),
        smpl={"pose": encode_array(smpl.pose), "transl": encode_array(smpl.transl)},
        skeleton={"joint_names": list(skeleton.SMPL24_NAMES), "parents": list(skeleton.SMPL24_PARENTS),
                  "rest_joints": encode_array(smpl.rest_joints), "up": "+Y", "forward": "+Z", "left": "+X",
                  "units": "metres"},
        tokens=encode_array(motion.tokens, "int32"),
    )
    return payload
