"""Matching logic shared by the API, the admin, the Celery tasks and the commands.

Views and tasks stay thin: they call these functions.
"""
from __future__ import annotations

import functools
import hashlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, QuerySet, When
from django.utils import timezone
from PIL import Image

from catalog.models import Category, Product
from matching import vector_index
from matching.feature_cache import STAMP_FIELDS, feature_cache, read_rows
from matching.indexing import IndexState
from matching.models import Keyframe, Match, MatchDecision, MicroVideo, ModelVersion
from ml.serving.video import VideoError, VideoInfo, probe_video, sample_frames
from workers.celery import app as celery_app

log = logging.getLogger(__name__)


class NoActiveModel(RuntimeError):
    """Raised when nothing can be embedded because no model version is active."""


class NotIndexed(ValueError):
    """Raised when a lookup needs an embedding that does not exist yet."""


class TextSearchUnavailable(RuntimeError):
    """Raised when the active model has no text query head (a bundle built without one)."""


# --- models and indexes ---------------------------------------------------------------------

def active_model_version() -> ModelVersion:
    version = ModelVersion.objects.filter(is_active=True).first()
    if version is None:
        raise NoActiveModel("no active model version: run `manage.py build_model` or `manage.py register_model`")
    return version


@functools.lru_cache(maxsize=2)
def _load_bundle(bundle_path: str, device: str):
    from ml.serving.bundle import ModelBundle  # torch import deferred: the web process needs it for text search only

    log.info("loading model bundle %s on %s", bundle_path, device)
    return ModelBundle.load(bundle_path, device=device)


def get_bundle(version: ModelVersion):
    """The model of a version, loaded once per process (workers call it at start-up)."""
    return _load_bundle(version.bundle_path, settings.MVMATCH_DEVICE)


def product_index(version: ModelVersion) -> vector_index.ProductIndex:
    return vector_index.ProductIndex(index_client(), version=version.name, dim=version.embed_dim,
                                     prefix=settings.MILVUS_COLLECTION_PREFIX, **_index_options())


def video_index(version: ModelVersion) -> vector_index.VideoIndex:
    return vector_index.VideoIndex(index_client(), version=version.name, dim=version.embed_dim,
                                   prefix=settings.MILVUS_COLLECTION_PREFIX, **_index_options())


def _index_options() -> dict:
    """Index type, parameters and read consistency for this backend (settings.MVMATCH_INDEX_*)."""
    return vector_index.collection_options(index_client(), settings.MVMATCH_INDEX_TYPE, settings.MVMATCH_INDEX_PARAMS,
                                           settings.MVMATCH_SEARCH_PARAMS, settings.MVMATCH_INDEX_CONSISTENCY)


def index_client():
    uri = settings.MILVUS_URI
    if "://" not in uri:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    return vector_index.connect(uri, settings.MILVUS_TOKEN)


def category_ids(category: Category | None) -> tuple[int, int, int]:
    """(upper, middle, lower) ids for the index's filter fields; -1 where unknown."""
    if category is None:
        return -1, -1, -1
    ids = {c.level: c.pk for c in (category, category.parent, category.parent.parent if category.parent else None) if c}
    return ids.get(0, -1), ids.get(1, -1), ids.get(2, -1)


# --- uploads --------------------------------------------------------------------------------

class DuplicateUpload(ValueError):
    """The publisher already uploaded this exact file."""

    def __init__(self, existing: MicroVideo):
        super().__init__(f"this video was already uploaded as video {existing.pk}")
        self.existing = existing


@dataclass
class CheckedUpload:
    sha256: str
    info: VideoInfo


def check_video_upload(uploaded) -> CheckedUpload:
    """Validate an uploaded video before anything is stored. Raises VideoError with the reason."""
    name = getattr(uploaded, "name", "") or ""
    if not name.lower().endswith(settings.MVMATCH_VIDEO_EXTENSIONS):
        raise VideoError(f"unsupported file type {Path(name).suffix or '(none)'}; "
                         f"allowed: {', '.join(settings.MVMATCH_VIDEO_EXTENSIONS)}")
    if uploaded.size == 0:
        raise VideoError("file is empty")
    if uploaded.size > settings.MVMATCH_MAX_UPLOAD_BYTES:
        raise VideoError(f"file is {uploaded.size} bytes; the limit is {settings.MVMATCH_MAX_UPLOAD_BYTES} bytes")
    digest = hashlib.sha256()
    for chunk in uploaded.chunks():
        digest.update(chunk)
    uploaded.seek(0)
    path = getattr(uploaded, "temporary_file_path", None)
    if path:
        info = _probe(path())
    else:  # small uploads live in memory: probe a temporary copy
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as tmp:
            for chunk in uploaded.chunks():
                tmp.write(chunk)
            tmp.flush()
            uploaded.seek(0)
            info = _probe(tmp.name)
    return CheckedUpload(sha256=digest.hexdigest(), info=info)


def upload_video(publisher, uploaded, caption: str = "", category: Category | None = None) -> MicroVideo:
    """Check and store an upload, then queue it. Raises VideoError or DuplicateUpload; stores nothing then."""
    checked = check_video_upload(uploaded)
    existing = MicroVideo.objects.filter(publisher=publisher, sha256=checked.sha256).first()
    if existing:
        raise DuplicateUpload(existing)
    try:
        with transaction.atomic():
            video = MicroVideo(publisher=publisher, caption=caption, category=category, sha256=checked.sha256,
                               size_bytes=uploaded.size, original_filename=uploaded.name,
                               duration=checked.info.duration, width=checked.info.width, height=checked.info.height)
            video.file.save(Path(uploaded.name).name, uploaded, save=False)
            video.save()
    except IntegrityError:  # the same upload raced in twice
        video.file.delete(save=False)
        raise DuplicateUpload(MicroVideo.objects.get(publisher=publisher, sha256=checked.sha256))
    queue_video(video)
    return video


def _probe(path: str) -> VideoInfo:
    return probe_video(path, max_bytes=settings.MVMATCH_MAX_UPLOAD_BYTES,
                       max_duration=settings.MVMATCH_MAX_VIDEO_SECONDS)


# --- ingestion ------------------------------------------------------------------------------
# One protocol for products and videos (see matching.indexing): claim, process, publish by
# compare-and-set, loop while the content changed under us, clean up if the item was deleted.

class InputError(ValueError):
    """The item's own content cannot be processed (not the infrastructure's fault): it is marked failed."""


class Outcome(NamedTuple):
    status: str  # indexed, failed, or one of the words below
    reason: str = ""


CHANGED, LOST = "changed", "lost"  # internal: the revision moved on / the claim or the row is gone
BUSY, SKIPPED, MISSING = "busy", "skipped", "missing"  # another task holds it / nothing to do / deleted


@dataclass
class _Processed:
    """What processing an item made, before it is published."""

    vector: np.ndarray
    detail: bytes | None
    category: Category | None  # what the index filters on
    fields: dict = field(default_factory=dict)  # further columns to set on publish
    keyframes: list[Keyframe] = field(default_factory=list)  # unsaved rows whose images are already stored


def ingest_video(video_id: int, token: str, worker: str = "") -> Outcome:
    """Probe, sample, embed, index and record suggestions for one video; safe to run twice."""
    return _ingest(MicroVideo, video_id, token, worker, _process_video)


def ingest_product(product_id: int, token: str, worker: str = "") -> Outcome:
    """Embed a product's photos and text, index it and record the videos it fits; safe to run twice."""
    return _ingest(Product, product_id, token, worker, _process_product)


def _ingest(model, pk: int, token: str, worker: str, process) -> Outcome:
    version = active_model_version()
    claimed = _claim(model, pk, token, worker)
    if claimed is not None:
        return Outcome(claimed)
    while True:
        item = _item_queryset(model).filter(pk=pk).first()
        if item is None:
            return Outcome(MISSING)
        try:
            processed = process(item, version)
        except (InputError, VideoError) as exc:
            outcome = _publish_failure(model, pk, token, item.revision, str(exc))
        else:
            outcome = _publish(item, token, version, processed)
        if outcome.status == LOST:
            return Outcome(MISSING if not model.objects.filter(pk=pk).exists() else BUSY)
        if outcome.status != CHANGED:
            return outcome
        version = active_model_version()  # an edit or a re-index: process the new revision now


def _item_queryset(model):
    return model.objects.select_related("category__parent__parent")


def _claim(model, pk: int, token: str, worker: str) -> str | None:
    """Take the item for this task; None when taken, else why not (BUSY, SKIPPED, MISSING)."""
    now = timezone.now()
    free = Q(claim_token="") | Q(claim_until__lt=now) | Q(claim_token=token)
    taken = model.objects.filter(Q(pk=pk), free, status__in=[IndexState.QUEUED, IndexState.PROCESSING]).update(
        status=IndexState.PROCESSING, claim_token=token, claimed_by=worker,
        claim_until=now + timedelta(seconds=settings.MVMATCH_TASK_LEASE_SECONDS),
        # a redelivered task (same token) is the same attempt
        attempts=Case(When(claim_token=token, then=F("attempts")), default=F("attempts") + 1))
    if taken:
        return None
    status = model.objects.filter(pk=pk).values_list("status", flat=True).first()
    if status is None:
        return MISSING
    return BUSY if status in (IndexState.QUEUED, IndexState.PROCESSING) else SKIPPED


_RELEASE = {"claim_token": "", "claimed_by": "", "claim_until": None}


def _publish(item, token: str, version: ModelVersion, processed: _Processed) -> Outcome:
    """Write the vector, then the row with its keyframes and matches in one transaction, only if this task
    still holds the item at the revision it read."""
    model = type(item)
    index = index_of(model)(version)
    index.upsert([item.pk], processed.vector[None], *([i] for i in category_ids(processed.category)))
    item.detail = processed.detail
    direction, ranked = _top_list(item, version, processed.vector)
    old_images = []
    with transaction.atomic():
        row = model.objects.select_for_update().filter(pk=item.pk, claim_token=token).first()
        if row is None or row.revision != item.revision:
            status = LOST if row is None else CHANGED
        else:
            if processed.keyframes:
                old_images = [kf.image.name for kf in row.keyframes.all()]
                row.keyframes.all().delete()
                Keyframe.objects.bulk_create(processed.keyframes)
            model.objects.filter(pk=item.pk).update(
                **processed.fields, detail=processed.detail, model_version=version, status=IndexState.INDEXED,
                error="", indexed_at=timezone.now(), indexed_revision=item.revision, **_RELEASE)
            _record(direction, version, {_anchor_field(model): item.pk}, ranked)
            status = IndexState.INDEXED
    if status != IndexState.INDEXED:
        _delete_files([kf.image.name for kf in processed.keyframes])
        if status == LOST and not model.objects.filter(pk=item.pk).exists():
            index.delete([item.pk])  # deleted while we processed: leave nothing behind
        return Outcome(status)
    _delete_files(old_images)
    return Outcome(IndexState.INDEXED)


def _publish_failure(model, pk: int, token: str, revision: int, reason: str) -> Outcome:
    """Mark the item failed (if still ours at this revision); a failed item is findable nowhere."""
    failed = model.objects.filter(pk=pk, claim_token=token, revision=revision).update(
        status=IndexState.FAILED, error=reason, **_RELEASE)
    if not failed:
        held = model.objects.filter(pk=pk, claim_token=token).exists()
        return Outcome(CHANGED if held else LOST)
    forget_item(model, pk)
    return Outcome(IndexState.FAILED, reason)


def fail(model, pk: int, token: str, reason: str) -> bool:
    """Mark an item in flight failed after an error outside its content (the task gave up); False if another
    task holds it or it is no longer in flight."""
    failed = model.objects.filter(Q(claim_token=token) | Q(claim_token=""), pk=pk,
                                  status__in=[IndexState.QUEUED, IndexState.PROCESSING]).update(
        status=IndexState.FAILED, error=reason, **_RELEASE)
    if failed:
        forget_item(model, pk)
    return bool(failed)


def forget_item(model, pk: int) -> None:
    """Remove an item that is no longer findable from every version's index, with its pending matches."""
    for version in ModelVersion.objects.all():
        index_of(model)(version).delete([pk])
    Match.objects.filter(**{_anchor_field(model): pk}, status=Match.Review.PENDING).delete()


def _process_video(video: MicroVideo, version: ModelVersion) -> _Processed:
    path = video.file.path
    if not Path(path).is_file():
        raise InputError("the uploaded file is gone")
    info = _probe(path)
    sampled = sample_frames(path, settings.MVMATCH_FRAMES_PER_VIDEO, settings.MVMATCH_KEYFRAME_SIZE, info=info)
    bundle = get_bundle(version)
    embedded = bundle.embed_videos([sampled.frames], [video.caption])
    detail = embedded.details[0] if embedded.details else None
    predicted, confidence = _predicted_category(bundle, detail)
    kept = None if detail is None else detail.kept.tolist()
    return _Processed(
        vector=embedded.vectors[0], detail=None if detail is None else detail.to_bytes(),
        category=video.category or predicted,  # the stated category, else the predicted one
        fields={"duration": info.duration, "width": info.width, "height": info.height,
                "predicted_category": predicted, "predicted_confidence": confidence},
        keyframes=_stored_keyframes(video, sampled.frames, sampled.timestamps, kept))


def _stored_keyframes(video: MicroVideo, frames: np.ndarray, timestamps: list[float],
                      salient: list[bool] | None) -> list[Keyframe]:
    keyframes = []
    for position, (frame, ts) in enumerate(zip(frames, timestamps)):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=85)
        kf = Keyframe(video=video, position=position, timestamp=ts,
                      salient=True if salient is None else salient[position])
        kf.image.save(f"v{video.pk}_{position}.jpg", ContentFile(buf.getvalue()), save=False)
        keyframes.append(kf)
    return keyframes


def _delete_files(names: list[str]) -> None:
    for name in names:
        if name:
            default_storage.delete(name)


def _predicted_category(bundle, detail) -> tuple[Category | None, float | None]:
    predicted = bundle.two_stage.predicted_category(detail) if detail is not None else None
    if predicted is None:
        return None, None
    index, probability = predicted
    return Category.objects.filter(level=Category.Level.LOWER, level_index=index).first(), probability


def _process_product(product: Product, version: ModelVersion) -> _Processed:
    try:
        photos = [_load_photo(img.image) for img in product.images.all()]
    except (OSError, ValueError) as exc:
        raise InputError(f"could not read product photo: {exc}") from exc
    if not photos:
        raise InputError("product has no photo")
    embedded = get_bundle(version).embed_products([photos], [product.text])
    return _Processed(vector=embedded.vectors[0], detail=embedded.details[0].to_bytes() if embedded.details else None,
                      category=product.category)


def _load_photo(image) -> np.ndarray:
    """Pixel count checked before decoding, reduced at once (catalog.photos); PhotoError is a ValueError."""
    from catalog.photos import decode_photo

    with image.open("rb") as fh:
        return decode_photo(fh, name=f"photo {image.name}")


# --- lookups --------------------------------------------------------------------------------

@dataclass
class Hit:
    """One ranked item of a lookup, in either direction; ``review`` is the decision on record, if any."""

    video: MicroVideo
    product: Product
    score: float
    index_score: float
    frame_position: int | None
    frame_timestamp: float | None
    rank: int
    model_version: ModelVersion
    review: str | None = None


def rank(obj, k: int, category: Category | None = None, *, videos: QuerySet | None = None) -> list[Hit]:
    """The top-k of the other side for a video (ad suggestions) or a product (the videos it fits).

    Reads only: the review queue is written at indexing time and by ``recompute_matches``.
    ``videos`` restricts the video side (what the viewer may see)."""
    from_video = isinstance(obj, MicroVideo)
    fetch = k if videos is None else min(vector_index.MAX_TOP_K, max(4 * k, settings.MVMATCH_RERANK_TOP_N))
    version, rows = rank_for(obj, fetch, category, from_video, settings.MVMATCH_RERANK_TOP_N)
    other_ids = [product_id if from_video else video_id for video_id, product_id, *_ in rows]
    if from_video:
        others = _hit_rows(Product).select_related("merchant")
    else:
        others = (_hit_rows(MicroVideo) if videos is None else videos).select_related("publisher")
    found = others.in_bulk(other_ids)
    reviews = dict(((m.video_id, m.product_id), m.status) for m in Match.objects.filter(
        **{_anchor_field(type(obj)): obj.pk}, model_version=version,
        direction=_direction(from_video)).only("video_id", "product_id", "status"))
    moments = dict(((video_id, position), ts) for video_id, position, ts in Keyframe.objects.filter(
        video_id__in={r[0] for r in rows}).values_list("video_id", "position", "timestamp"))
    hits = []
    for video_id, product_id, score, index_score, frame in rows:
        other = found.get(product_id if from_video else video_id)
        if other is None:
            continue  # deleted since it was indexed, or not visible to the viewer
        video, product = (obj, other) if from_video else (other, obj)
        hits.append(Hit(video, product, float(score), float(index_score), frame, moments.get((video_id, frame)),
                        len(hits) + 1, version, reviews.get((video_id, product_id))))
        if len(hits) == k:
            break
    return hits


def _direction(from_video: bool) -> str:
    return Match.Direction.VIDEO_TO_PRODUCT if from_video else Match.Direction.PRODUCT_TO_VIDEO


def _anchor_field(model) -> str:
    return "video_id" if model is MicroVideo else "product_id"


def rank_for(obj, k: int, category: Category | None, from_video: bool, rerank_top_n: int,
             vector: np.ndarray | None = None, version: ModelVersion | None = None
             ) -> tuple[ModelVersion, list[tuple[int, int, float, float, int | None]]]:
    """Search the other side's collection with obj's vector (first stage; the stored one of its indexed
    version, unless an ingest passes the vector and version it has in memory) and reorder its top
    ``rerank_top_n`` with the model's second stage (ml.serving.two_stage; 0: index order). Returns the version
    and the top-k rows (video, product, score, index score, driving frame); writes nothing."""
    stored = vector is None  # obj's features are those in the database (not an ingest's, about to be published)
    version = version or _indexed_version(obj)
    source, target = (video_index, product_index) if from_video else (product_index, video_index)
    if vector is None:
        vector = source(version).get([obj.pk]).get(obj.pk)
    if vector is None:
        raise NotIndexed(f"{obj._meta.verbose_name} {obj.pk} has no vector for model {version.name}")
    second = _second_stage(version, obj) if rerank_top_n else None
    hits = target(version).search(vector[None], max(k, rerank_top_n) if second else k, **_filter(category))[0]
    ranked = _rerank_lookup(second, version, obj, hits, from_video, stored) if second and hits else None
    if ranked is None:
        ranked = [(h.id, h.score, h.score, None) for h in hits]
    return version, [(obj.pk, cid, score, first, frame) if from_video else (cid, obj.pk, score, first, frame)
                     for cid, score, first, frame in ranked[:k]]


def _second_stage(version: ModelVersion, obj):
    """The version's second stage, if it has one and obj has its stored features."""
    if obj.detail is None:
        return None
    return get_bundle(version).two_stage


def _rerank_lookup(second, version: ModelVersion, obj, hits, from_video: bool, stored: bool):
    """`_rerank` of a video's product candidates or a product's video candidates."""
    query = _query_features(second, obj, stored)
    if from_video:
        return _rerank(second, version, hits, Product, lambda products, details, first: second.rank_products(
            query, details, [category_levels_of(p.category_id) for p in products], first))
    return _rerank(second, version, hits, MicroVideo, lambda videos, details, first: second.rank_videos(
        query, details, first, [category_levels(obj.category)]))


def _query_features(second, obj, stored: bool):
    """The querying item's features, prepared (`TwoStage.prepare`): from the feature cache when they are the ones
    its row holds (a lookup), from the item itself when an ingest is about to publish them."""
    if stored:
        cached = feature_cache().details(type(obj), [obj], second.prepare).get(obj.pk)
        if cached is not None:
            return cached
    from ml.serving.two_stage import ProductDetail, VideoDetail

    return second.prepare((VideoDetail if isinstance(obj, MicroVideo) else ProductDetail).from_bytes(obj.detail))


def _rerank(second, version: ModelVersion, hits, model, rank) -> list[tuple[int, float, float, int | None]] | None:
    """The index's candidates (rows of ``model``) reordered by ``rank(candidates, their prepared details, index
    scores) -> ml.serving.two_stage.Ranked``, as (pk, final score, index score, driving frame), best first; None if a
    candidate lacks this version's stored features (a build without a second stage, or re-embedded by another
    version since): index order then. Candidates are read as plain tuples (pk, the feature stamp, the category),
    not model instances: the features come from the per-process feature cache, already through ``second.prepare``."""
    fields = (*STAMP_FIELDS, *(("category_id",) if model is Product else ()))
    found = {row.pk: row for row in read_rows(model, [h.id for h in hits], fields)}
    hits = [h for h in hits if h.id in found]  # the index may name rows deleted since
    details = feature_cache().details(model, [found[h.id] for h in hits], second.prepare)
    if not hits or any(details[h.id] is None or found[h.id].model_version_id != version.pk for h in hits):
        return None
    candidates = [found[h.id] for h in hits]
    ranked = rank(candidates, [details[h.id] for h in hits], [h.score for h in hits])
    scores = ranked.score.tolist()
    frames = [None] * len(hits) if ranked.frame is None else ranked.frame.tolist()
    return [(candidates[i].pk, scores[i], hits[i].score, frames[i]) for i in ranked.order.tolist()]


@functools.lru_cache(maxsize=4096)
def category_levels_of(category_id: int | None) -> tuple[int, int, int]:
    """`category_levels` by id, remembered per process (the ontology is loaded once; the model's classes follow it)."""
    if category_id is None:
        return (-1, -1, -1)
    return category_levels(Category.objects.select_related("parent__parent").get(pk=category_id))


def category_levels(category: Category | None) -> tuple[int, int, int]:
    """(upper, middle, lower) positions of a category's path in its levels (the model's class indices); -1 unknown."""
    out = [-1, -1, -1]
    while category is not None:
        out[category.level] = category.level_index
        category = category.parent
    return tuple(out)


@dataclass
class TextSearchResult:
    products: list[tuple[Product, float]]  # best first, with cosine scores
    videos: list[tuple[MicroVideo, float]]


def search_text(query: str, k: int, category: Category | None = None, *, videos: QuerySet | None = None,
                products: QuerySet | None = None) -> TextSearchResult:
    """Products and micro-videos for a free-text query, through the active model's query head and
    the same Milvus collections the suggestions use. ``videos`` / ``products`` restrict each side (what
    the viewer may see: ``visible_videos``, ``visible_products``)."""
    query = query.strip()
    if not query:
        raise ValueError("the query is empty")
    version = active_model_version()
    bundle = get_bundle(version)
    if bundle.text_query is None:
        raise TextSearchUnavailable(f"model {version.name} has no text query head: rebuild or register one with it")
    embedded = bundle.embed_text_query(query, detail=bool(settings.MVMATCH_RERANK_TOP_N))
    found = {}
    for model, index, allowed in ((Product, product_index, products), (MicroVideo, video_index, videos)):
        rerank = model is MicroVideo and embedded.details is not None  # the re-ranking head scores videos vs text
        fetch = max(k, settings.MVMATCH_RERANK_TOP_N) if rerank else k
        if allowed is not None:  # room for the hits the viewer may not see
            fetch = min(vector_index.MAX_TOP_K, max(4 * k, fetch))
        hits = index(version).search(embedded.vectors, fetch, **_filter(category))[0]
        if allowed is not None:
            visible = set(allowed.filter(pk__in=[h.id for h in hits]).values_list("pk", flat=True))
            hits = [h for h in hits if h.id in visible]
        ranked = _rerank_text(bundle.two_stage, version, embedded.details[0], hits) if rerank and hits else None
        rows = _hit_rows(model)
        if ranked is not None:
            live = rows.in_bulk([pk for pk, *_ in ranked[:k]])
            found[model] = [(live[pk], score) for pk, score, _, _ in ranked[:k] if pk in live]
        else:
            live = rows.in_bulk([h.id for h in hits])  # the index may name rows deleted since
            found[model] = [(live[h.id], h.score) for h in hits if h.id in live][:k]
    return TextSearchResult(found[Product], found[MicroVideo])


def _hit_rows(model) -> QuerySet:
    """Rows to show as hits: what their summaries read, in the same queries (no features)."""
    if model is Product:
        return Product.objects.select_related("category").prefetch_related("images").defer("detail")
    return MicroVideo.objects.defer("detail")


def _rerank_text(second, version: ModelVersion, query, hits):
    return _rerank(second, version, hits, MicroVideo,
                   lambda videos, details, first: second.rank_videos(query, details, first))


def _indexed_version(obj) -> ModelVersion:
    if obj.status != IndexState.INDEXED or obj.model_version is None:
        raise NotIndexed(f"{obj._meta.verbose_name} {obj.pk} is {obj.status}, not indexed yet")
    return obj.model_version


def _filter(category: Category | None) -> dict:
    if category is None:
        return {}
    return {("upper_id", "middle_id", "lower_ids")[category.level]: category.pk if category.level < 2 else [category.pk]}


# --- the review queue -----------------------------------------------------------------------
# Match rows are written when an item is indexed (by its worker) and by an explicit recompute, never by
# a lookup. A recompute replaces the item's pending rows of every model version with the current
# version's top list; reviewed rows are kept whatever their version.

def recompute_matches(obj) -> list[Match]:
    """Record obj's current top list as pending Match rows (the owner's POST .../recompute/, the admin action)."""
    direction, ranked = _top_list(obj, _indexed_version(obj))
    try:
        return _record(direction, obj.model_version, {_anchor_field(type(obj)): obj.pk}, ranked)
    except IntegrityError:  # an item of the list (or obj itself) was deleted meanwhile: record the rest
        return _record(direction, obj.model_version, {_anchor_field(type(obj)): obj.pk}, ranked)


def recompute_all(queryset) -> tuple[int, int]:
    """`recompute_matches` for every indexed item of a queryset; returns (recomputed, skipped as not indexed)."""
    indexed = queryset.filter(status=IndexState.INDEXED).select_related("category__parent__parent", "model_version")
    done = 0
    for obj in indexed:
        recompute_matches(obj)
        done += 1
    return done, queryset.count() - done


def _top_list(obj, version: ModelVersion, vector: np.ndarray | None = None):
    """(direction, ranked rows) of obj's top list under ``version``, for the review queue."""
    from_video = isinstance(obj, MicroVideo)
    rows = rank_for(obj, settings.MVMATCH_SUGGESTIONS, None, from_video, settings.MVMATCH_RERANK_TOP_N,
                    vector=vector, version=version)[1]
    return _direction(from_video), rows


@transaction.atomic
def _record(direction: str, version: ModelVersion, anchor: dict,
            rows: list[tuple[int, int, float, float, int | None]]) -> list[Match]:
    """Upsert the ranked list of one query, rows = (video, product, score, index score, driving frame);
    reviewed decisions are kept, the anchor's other pending rows (of any version) are removed."""
    # Ids from the index may name rows deleted since; keep only live ones.
    live_videos = set(MicroVideo.objects.filter(pk__in={r[0] for r in rows}).values_list("pk", flat=True))
    live_products = set(Product.objects.filter(pk__in={r[1] for r in rows}).values_list("pk", flat=True))
    rows = [r for r in rows if r[0] in live_videos and r[1] in live_products]
    matches = []
    for rank_, (video_id, product_id, score, index_score, frame) in enumerate(rows, start=1):
        match, _ = Match.objects.update_or_create(
            video_id=video_id, product_id=product_id, direction=direction, model_version=version,
            defaults={"score": float(score), "index_score": float(index_score), "frame_position": frame,
                      "rank": rank_},
        )
        matches.append(match)
    Match.objects.filter(**anchor, direction=direction, status=Match.Review.PENDING).exclude(
        pk__in=[m.pk for m in matches]).delete()
    return matches


@transaction.atomic
def review(matches: QuerySet[Match], user, status: str) -> int:
    """Approve or reject, for a user with ``matching.change_match`` only (checked here, whoever calls).
    Who decided and when is kept on each row, and every change is added to the audit (MatchDecision)."""
    from django.core.exceptions import PermissionDenied

    if status not in (Match.Review.APPROVED, Match.Review.REJECTED):
        raise ValueError(f"unknown review status {status!r}")
    if not user.has_perm("matching.change_match"):
        raise PermissionDenied(f"{user} may not decide matches (needs matching.change_match)")
    changing = list(matches.select_for_update().exclude(status=status).values_list("pk", "status"))
    MatchDecision.objects.bulk_create([
        MatchDecision(match_id=pk, user=user, username=user.get_username(), before=before, after=status)
        for pk, before in changing])
    matches.filter(pk__in=[pk for pk, _ in changing]).update(status=status, reviewed_by=user,
                                                             reviewed_at=timezone.now())
    return len(changing)


@transaction.atomic
def reopen(matches: QuerySet[Match], user) -> int:
    """Take decisions back (the review queue's undo): the matches are pending again, for a user with
    ``matching.change_match`` only; the audit (MatchDecision) keeps the decision and its withdrawal."""
    from django.core.exceptions import PermissionDenied

    if not user.has_perm("matching.change_match"):
        raise PermissionDenied(f"{user} may not decide matches (needs matching.change_match)")
    changing = list(matches.select_for_update().exclude(status=Match.Review.PENDING).values_list("pk", "status"))
    MatchDecision.objects.bulk_create([
        MatchDecision(match_id=pk, user=user, username=user.get_username(), before=before, after=Match.Review.PENDING)
        for pk, before in changing])
    matches.filter(pk__in=[pk for pk, _ in changing]).update(status=Match.Review.PENDING, reviewed_by=None,
                                                             reviewed_at=None)
    return len(changing)


# --- queueing and deletion ------------------------------------------------------------------

# Sent by name: the tasks module imports this one, not the other way round.
INGEST_TASKS = {MicroVideo: "matching.tasks.ingest_video", Product: "matching.tasks.ingest_product"}

def requeue(queryset) -> int:
    """Send products or videos to the workers again (an edit, admin actions, `reindex`).

    Bumping the revision makes a task that is processing one of them now start over with the new state
    instead of publishing the old one."""
    model = queryset.model
    ids = list(queryset.values_list("pk", flat=True))
    model.objects.filter(pk__in=ids).update(revision=F("revision") + 1, status=IndexState.QUEUED, error="",
                                            queued_at=timezone.now(), attempts=0)
    for pk in ids:
        send_to_workers(model, pk)
    return len(ids)


def send_to_workers(model, pk: int) -> None:
    """Queue the ingest task once the current transaction commits (a worker must be able to read the row)."""
    task = INGEST_TASKS[model]
    transaction.on_commit(lambda: celery_app.signature(task, args=[pk]).delay())


def save_product(serializer, merchant=None) -> Product:
    """Save a product from a valid ProductSerializer (the API's or the merchant page's) and send it to be
    indexed: a new one is queued, an edited one gets a new revision."""
    if serializer.instance is None:
        product = serializer.save(merchant=merchant)
        queue_product(product)
    else:
        product = serializer.save()
        requeue(Product.objects.filter(pk=product.pk))
    return product


def queue_video(video: MicroVideo) -> None:
    send_to_workers(MicroVideo, video.pk)


def queue_product(product: Product) -> None:
    send_to_workers(Product, product.pk)


def delete_video(video: MicroVideo) -> None:
    """Remove the row, then its vectors and files; a task processing it meanwhile cleans up after itself."""
    files = [video.file.name, *(kf.image.name for kf in video.keyframes.all())]
    _delete_item(video, files)


def delete_product(product: Product) -> None:
    _delete_item(product, [img.image.name for img in product.images.all()])


def _delete_item(obj, files: list[str]) -> None:
    model, pk = type(obj), obj.pk
    with transaction.atomic():
        obj.delete()
    for version in ModelVersion.objects.all():
        index_of(model)(version).delete([pk])
    _delete_files(files)


def index_of(model):
    return video_index if model is MicroVideo else product_index


# --- visibility -----------------------------------------------------------------------------
# A publisher's video is theirs (and staff's) until they publish it; merchants' lookups, text search and
# media show other publishers' videos only once published. Products are the merchant's; publishers see
# them as suggestions (ranked hits, search, photos). Superusers and staff see everything (mvmatch.roles).

def visible_videos(user) -> QuerySet[MicroVideo]:
    """Staff and reviewers: all; a merchant or publisher: their own and the published ones; others: none."""
    from mvmatch.roles import has_any_role, is_reviewer, is_staff_reader

    videos = MicroVideo.objects.defer("detail")
    if is_staff_reader(user) or is_reviewer(user):
        return videos
    if not has_any_role(user):
        return videos.none()
    return videos.filter(Q(publisher=user) | Q(published=True))


def visible_products(user) -> QuerySet[Product]:
    """Staff, reviewers and publishers (suggestions): all; a merchant: their own; anyone else: none."""
    from mvmatch.roles import is_merchant, is_publisher, is_reviewer, is_staff_reader

    products = Product.objects.defer("detail")
    if is_staff_reader(user) or is_reviewer(user) or is_publisher(user):
        return products
    if not is_merchant(user):
        return products.none()
    return products.filter(merchant=user)
