"""The reviewer's one-at-a-time queue: which pending match comes next, skips, and undo.

Decisions go through `services.review` (the one place that records and audits them). Skips and the
undo history belong to the reviewer's session: a skip hides a match from this reviewer for the
session only, and undo walks this reviewer's own actions back, newest first.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from catalog.models import Category
from matching import services
from matching.models import Match, ModelVersion

SKIPPED = "review_skipped"  # session keys
HISTORY = "review_history"  # [(action, match id)], newest last
HISTORY_LENGTH = 50


@dataclass(frozen=True)
class Filters:
    category: Category | None = None
    min_score: float | None = None
    max_score: float | None = None
    model_version: ModelVersion | None = None


def pending(filters: Filters) -> QuerySet[Match]:
    """Pending matches under the filters, best score first (the category filter means the product's subtree)."""
    qs = Match.objects.filter(status=Match.Review.PENDING)
    if filters.category is not None:
        qs = qs.filter(Q(product__category=filters.category)
                       | Q(product__category__path__startswith=filters.category.path + "/"))
    if filters.min_score is not None:
        qs = qs.filter(score__gte=filters.min_score)
    if filters.max_score is not None:
        qs = qs.filter(score__lte=filters.max_score)
    if filters.model_version is not None:
        qs = qs.filter(model_version=filters.model_version)
    return qs.order_by("-score", "pk")


def next_match(filters: Filters, session) -> Match | None:
    return (pending(filters).exclude(pk__in=session.get(SKIPPED, []))
            .select_related("video", "product__category", "product__merchant", "model_version")
            .defer("video__detail", "product__detail").first())


def decide(match: Match, user, session, status: str) -> None:
    """Record the decision at once; a match someone else decided meanwhile is left as they decided it."""
    if services.review(Match.objects.filter(pk=match.pk, status=Match.Review.PENDING), user, status):
        _remember(session, "decide", match.pk)


def skip(match: Match, session) -> None:
    session[SKIPPED] = [*session.get(SKIPPED, []), match.pk]
    _remember(session, "skip", match.pk)


def can_undo(session) -> bool:
    return bool(session.get(HISTORY))


def undo(user, session) -> Match | None:
    """Take back the newest action: a decision goes back to pending, a skip is forgotten. Returns its match."""
    history = list(session.get(HISTORY, []))
    if not history:
        return None
    action, match_id = history.pop()
    session[HISTORY] = history
    if action == "skip":
        session[SKIPPED] = [pk for pk in session.get(SKIPPED, []) if pk != match_id]
    else:
        services.reopen(Match.objects.filter(pk=match_id, reviewed_by=user), user)
    return (Match.objects.filter(pk=match_id, status=Match.Review.PENDING)
            .select_related("video", "product__category", "product__merchant", "model_version")
            .defer("video__detail", "product__detail").first())


def _remember(session, action: str, match_id: int) -> None:
    session[HISTORY] = [*session.get(HISTORY, []), (action, match_id)][-HISTORY_LENGTH:]
