"""The HTTP API's request and response bodies (pydantic): every request field is checked here, at the boundary.

Requests are strict: unknown fields, wrong JSON types ("4" for a number, 4.0 for an integer) and out-of-range values
are refused with 422 naming the field. Motion arrays travel as base64 (see encoding.py).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from safemotion.generate import MAX_PROMPT_CHARS, SECONDS_RANGE, VARIATIONS_RANGE
from safemotion.unlearn.audit import AUDIT_FPS_RANGE
from safemotion.unlearn.policies import DEFAULT_POLICY

MAX_JOB_ITEMS = 256
MAX_SEED = 2**63 - VARIATIONS_RANGE[1] - 1  # seeds seed..seed+variations-1 all fit in int64
MAX_MODEL_NAME = 200
MAX_AUDIT_FRAMES = 4000  # as sent; after resampling to 20 fps, unlearn.audit.MAX_AUDIT_FRAMES bounds the work too
REFUSED_CATEGORIES = {"Cc": "control character", "Cs": "unpaired surrogate"}

Policy = Literal["sanitize", "block", "allow"]
Role = Literal["artist", "safety-admin"]


def check_prompt(prompt: str) -> str:
    """The prompt unchanged; blank text (spaces and invisible format characters only), control characters and lone
    surrogates raise ValueError."""
    if all(char.isspace() or unicodedata.category(char) == "Cf" for char in prompt):
        raise ValueError(f"prompt is blank; describe the motion in 1-{MAX_PROMPT_CHARS} characters")
    for position, char in enumerate(prompt):
        kind = REFUSED_CATEGORIES.get(unicodedata.category(char))
        if kind:
            raise ValueError(f"prompt has a {kind} (U+{ord(char):04X}) at position {position}; "
                             "use plain text on one line")
    return prompt


Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                              description=f"what the person does, 1-{MAX_PROMPT_CHARS} characters, no control "
                                          "characters"),
                   AfterValidator(check_prompt)]


class Strict(BaseModel):
    """Request body base: strict JSON types, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class MotionSettings(Strict):
    """One prompt and how to generate it."""

    prompt: Prompt
    seconds: float | None = Field(None, ge=SECONDS_RANGE[0], le=SECONDS_RANGE[1],
                                  description="duration; null lets the model's length estimator choose")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="variation k is generated from seed + k")
    variations: int = Field(1, ge=VARIATIONS_RANGE[0], le=VARIATIONS_RANGE[1])
    foot_cleanup: bool = Field(True, description="pin planted feet with leg IK and put the lowest contact on the "
                                                 "floor after decoding (false: the decoder's joints as they are)")


class GenerateRequest(MotionSettings):
    """POST /v1/generate."""

    policy: Policy = Field(DEFAULT_POLICY, description="sanitize (default), block, or allow (safety-admin keys only)")
    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_NAME, description="default: the served model")


class JobRequest(Strict):
    """POST /v1/jobs: many prompts, one policy and model."""

    items: list[MotionSettings] = Field(min_length=1, max_length=MAX_JOB_ITEMS)
    policy: Policy = DEFAULT_POLICY
    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_NAME)


class ArrayPayload(Strict):
    """A numeric array: little-endian bytes of `dtype` in row-major order, base64-encoded."""

    dtype: Literal["float32", "float64", "int32", "int64"]
    shape: list[Annotated[int, Field(ge=0, le=1_000_000)]] = Field(max_length=4)
    data: str


class AuditRequest(Strict):
    """POST /v1/audit: joint positions [T, 22, 3] in metres, Y-up (the backend's frame), at `fps`."""

    joints: ArrayPayload
    fps: float = Field(20.0, ge=AUDIT_FPS_RANGE[0], le=AUDIT_FPS_RANGE[1],
                       description="frame rate of `joints`; the motion may last at most 200 s")
    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_NAME)


class SourcePayload(Strict):
    """A take to edit: `joints` [T, 22, 3] (metres, Y-up) or `features` [T, 263] (HumanML3D, not normalised), and for a
    take this server decoded, the base-layer ids it was decoded from."""

    joints: ArrayPayload | None = None
    features: ArrayPayload | None = None
    base_tokens: ArrayPayload | None = Field(
        None, description="integer ids [T / unit_length] (column 0 of the take's `tokens`): a kept token whose id here "
                          "or whose re-encoded id is a removed code counts as a hit, so an edit keeps the take's flags")
    fps: float = Field(20.0, ge=AUDIT_FPS_RANGE[0], le=AUDIT_FPS_RANGE[1],
                       description="must be the model's frame rate (GET /v1/models)")


class EditRequest(Strict):
    """POST /v1/edit: exactly one of `frames` (regenerate), `extend_seconds` (extend) or `between` (in-between)."""

    source: SourcePayload
    prompt: Prompt
    frames: list[Annotated[list[int], Field(min_length=2, max_length=2)]] | None = Field(
        None, max_length=32, description="frame spans [start, end) of the source to regenerate")
    extend_seconds: float | None = Field(None, ge=SECONDS_RANGE[0], le=SECONDS_RANGE[1],
                                         description="new motion to add to the source")
    extend_at: Literal["end", "start"] = "end"
    between: SourcePayload | None = Field(None, description="the second take: source, a generated transition, then "
                                                            "this take moved to continue from it")
    seconds: float | None = Field(None, ge=SECONDS_RANGE[0], le=SECONDS_RANGE[1],
                                  description="with `between`: length of the transition")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="variation k is generated from seed + k")
    variations: int = Field(1, ge=VARIATIONS_RANGE[0], le=VARIATIONS_RANGE[1])
    policy: Policy = Field(DEFAULT_POLICY, description="sanitize (default), block, or allow (safety-admin keys only)")
    model: str | None = Field(None, min_length=1, max_length=MAX_MODEL_NAME, description="default: the served model")


# ---------------------------------------------------------------------------------------------- responses

class Skeleton(BaseModel):
    """What an add-on needs to build the armature: SMPL's 24 joints (the first 22 are `joints`' columns)."""

    joint_names: list[str]
    parents: list[int] = Field(description="parent index of each joint, -1 for the root")
    rest_joints: ArrayPayload = Field(description="T-pose joint positions [24, 3] of this motion's body")
    up: str = "+Y"
    forward: str = "+Z"
    left: str = "+X"
    units: str = "metres"


class SmplPayload(BaseModel):
    """SMPL pose: local axis-angle rotations [T, 24, 3] (joint 0 global) and pelvis translation [T, 3]."""

    pose: ArrayPayload
    transl: ArrayPayload


class SignalPayload(BaseModel):
    """One safety signal: its score, the threshold it is compared with, and whether it reached it."""

    name: Literal["code_hit", "prompt", "motion", "combined"]
    score: float
    threshold: float
    fired: bool


class SafetyPayload(BaseModel):
    """Every safety signal of the motion (code-hit ratio; on screened models also the prompt screen, the motion judge
    and their combined score), the decision, and one sentence saying why."""

    concept: str
    policy: Policy
    decision: Literal["pass", "sanitized", "blocked", "allowed"]
    flagged: bool
    hit_ratio: float
    threshold: float
    num_tokens: int
    hit_tokens: list[int]
    spans: list[list[int]] = Field(description="frame spans [start, end) of hit tokens")
    unit_length: int
    calibrated: bool
    reason: str
    signals: list[SignalPayload] = Field(description="every signal that judged the motion")
    screened: bool = Field(description="the prompt screen and motion judge took part (else the code-hit ratio alone)")


class SeamPayload(BaseModel):
    """One seam of an edit: where regenerated frames meet kept ones."""

    frame: int = Field(description="the frame of the take where the regenerated part starts or ends")
    jump_m: float = Field(description="largest joint-velocity jump at the seam, metres per frame²")


class SeamsPayload(BaseModel):
    """An edit's seams after re-sampling, against the limit it re-sampled for."""

    limit_m: float = Field(description="EditSettings.seam_limit: seams over it were re-sampled")
    tries: int = Field(description="re-sampling tries made")
    seams: list[SeamPayload]
    warnings: list[str] = Field(description="one sentence per seam still over the limit after the tries")


class MotionPayload(BaseModel):
    """One generated motion; a motion blocked by the policy has no arrays, only its safety record (a request refused
    before generation: frames 0, fps null)."""

    prompt: str
    seed: int = Field(description="generating this seed as variation 0 reproduces the motion")
    variation: int
    fps: float | None
    frames: int
    seconds: float
    length_from: Literal["request", "estimator", "end_token", "refused before generation"]
    foot_cleanup: bool = Field(description="whether planted feet were pinned and the motion grounded")
    joints: ArrayPayload | None = Field(description="joint positions [T, 22, 3], metres, Y-up")
    smpl: SmplPayload | None
    skeleton: Skeleton | None
    tokens: ArrayPayload | None = Field(description="RVQ code ids [T/4, layers], -1 = skipped")
    safety: SafetyPayload | None = Field(description="null when the model has no removed codes (nothing to flag)")
    seams: SeamsPayload | None = Field(None, description="an edit's seams and warnings; null for a generation")


class GenerateResponse(BaseModel):
    """The motions of one request: `variations` of them, variation k from seed + k."""

    model: str
    policy: Policy
    motions: list[MotionPayload]


class JobItemStatus(BaseModel):
    """Progress of one prompt of a job."""

    index: int
    status: Literal["pending", "done", "failed", "cancelled"]
    prompt: str
    seconds: float | None
    seed: int
    variations: int
    error: str | None
    finished_at: str | None


class JobStatus(BaseModel):
    """A batch job and the progress of each of its prompts."""

    id: str
    status: Literal["queued", "running", "done", "cancelled"]
    owner: str
    model: str
    policy: Policy
    created_at: str
    updated_at: str
    total: int
    done: int
    failed: int
    cancelled: int
    pending: int
    items: list[JobItemStatus]


class JobItemResult(BaseModel):
    """The motions of one finished prompt of a job."""

    index: int
    status: Literal["pending", "done", "failed", "cancelled"]
    motions: list[MotionPayload] | None
    error: str | None


class JobResults(BaseModel):
    """A page of a job's items with their motions; `next_start` is null on the last page."""

    id: str
    status: Literal["queued", "running", "done", "cancelled"]
    items: list[JobItemResult]
    next_start: int | None


class AuditSpanPayload(BaseModel):
    """Consecutive hit tokens."""

    start_frame: int
    end_frame: int
    start_s: float
    end_s: float


class AuditResponse(BaseModel):
    """Where a motion uses the codes the model removed (encoded with the original codebooks)."""

    model: str
    concept: str
    fps: float
    source_fps: float
    unit_length: int
    frames: int
    seconds: float
    num_tokens: int
    hits: int
    hit_ratio: float
    threshold: float
    calibrated: bool
    flagged: bool
    hit_tokens: list[int]
    spans: list[AuditSpanPayload]
    timeline: list[float] = Field(description="per second: fraction of the tokens starting in it that hit")
    layer_ratios: dict[str, float]
    signals: list[SignalPayload] = Field(description="code_hit, and the motion judge on a screened model")
    motion_timeline: list[float] | None = Field(description="per second: the motion judge's score (screened models)")
    reason: str


class ModelInfo(BaseModel):
    """A served model and what it accepts."""

    name: str
    text_encoder: str
    precision: str = Field(description="of the token transformers: fp32, bf16 or int8")
    fps: float
    unit_length: int
    codebook_size: int = Field(description="base-layer code ids are 0 to codebook_size - 1")
    seconds_range: list[float]
    variations_range: list[int]
    length_estimator: bool = Field(description="whether seconds may be left out (a length estimator, or a generator "
                                              "that ends its motion with an [END] token)")
    unlearning: dict | None = Field(description="method, concept and removed base-code count; null for a plain model")
    safety_threshold: float | None
    safety_calibrated: bool | None
    policies: list[Policy] = Field(description="policies this server accepts (allow needs a safety-admin key)")


class ModelsResponse(BaseModel):
    """GET /v1/models."""

    models: list[ModelInfo]
    body_model: bool = Field(description="whether GET /v1/body-model serves a body mesh (`serve --body-model`)")


class BodyModelResponse(BaseModel):
    """GET /v1/body-model: the body model's zero-shape template mesh, Y-up metres, and how it is skinned."""

    joint_names: list[str]
    parents: list[int] = Field(description="parent index of each joint, -1 for the root")
    rest_joints: ArrayPayload = Field(description="the template's joint positions [24, 3]")
    vertices: ArrayPayload = Field(description="template vertex positions [V, 3] float32 (6890 for SMPL)")
    faces: ArrayPayload = Field(description="triangles [F, 3] int32, indices into `vertices`")
    weights: ArrayPayload = Field(description="linear blend skinning weights [V, 24] float32, rows sum to 1")
    up: str = "+Y"
    units: str = "metres"


class QueueInfo(BaseModel):
    """The micro-batching queue."""

    waiting: int
    capacity: int
    max_batch: int
    batches: int
    mean_batch_motions: float


class HealthResponse(BaseModel):
    """GET /v1/health."""

    status: Literal["ok"]
    version: str
    model: str
    device: str
    auth: Literal["api-keys", "single-user"]
    queue: QueueInfo


class AuditLogEntry(BaseModel):
    """One generation, flag or policy decision."""

    id: int
    time: str
    user: str
    role: str
    event: Literal["generate", "edit", "job_item", "policy_refused", "motion_audit"]
    model: str
    prompt: str | None
    policy: str | None
    decision: str | None
    flagged: bool | None
    hit_ratio: float | None
    signals: list[SignalPayload] | None = Field(description="the safety record's signals (null before they existed)")
    reason: str | None
    seed: int | None
    variation: int | None
    job_id: str | None
    request_id: str | None


class AuditLogResponse(BaseModel):
    """GET /v1/audit-log: newest first; pass `before_id` = `next_before_id` for the next page."""

    entries: list[AuditLogEntry]
    next_before_id: int | None


class FieldProblem(BaseModel):
    """One invalid field: its dotted path in the request and why it was refused."""

    field: str
    reason: str
    type: str


class ValidationProblem(BaseModel):
    """422: the request was understood but a field is invalid."""

    detail: list[FieldProblem]


class ErrorMessage(BaseModel):
    """Any other error."""

    detail: str
