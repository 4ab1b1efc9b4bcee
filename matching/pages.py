"""Server-rendered pages for publishers and reviewers, plus sign-in, the home redirect and text search.

Each view checks the role and the ownership, calls the same services as the API and renders a
template; the live parts are htmx fragments served by the views below.
"""
from functools import wraps

from django import forms
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

from catalog.models import Category
from catalog.services import resolve_category
from matching import review_queue, services
from matching.indexing import IndexState
from matching.models import Match, MicroVideo, ModelVersion
from matching.serializers import MicroVideoSerializer
from ml.serving.ontology import UnknownCategory
from ml.serving.video import VideoError
from mvmatch.roles import has_any_role, is_merchant, is_publisher, is_reviewer
from mvmatch import converters  # noqa: F401  (registers <id:…>: no overflow on huge ids)

FINISHED = (IndexState.INDEXED, IndexState.FAILED)


def roles_of(user) -> dict[str, bool]:
    return {"publisher": is_publisher(user), "merchant": is_merchant(user), "reviewer": is_reviewer(user)}


def page(request, template: str, context: dict | None = None, status: int = 200):
    """Render a page or fragment with what the navigation needs (the user's roles)."""
    return render(request, template, {"roles": roles_of(request.user), **(context or {})}, status=status)


def role_required(predicate):
    """Signed-in users holding the role; others get 403 (anonymous users are sent to sign in)."""
    def decorate(view):
        @login_required
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            if not predicate(request.user):
                raise PermissionDenied
            return view(request, *args, **kwargs)
        return wrapped
    return decorate


def category_from(value: str | None) -> Category | None:
    """The optional category filter of a page (id or path); an unknown one is a 400."""
    if not value:
        return None
    try:
        return resolve_category(value)
    except UnknownCategory as exc:
        raise BadRequest(str(exc))


class BadRequest(Exception):
    """Bad input on a page: answered 400 with the message (see `answers_400`)."""


def answers_400(view):
    @wraps(view)
    def wrapped(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except BadRequest as exc:
            return HttpResponse(str(exc), status=400, content_type="text/plain; charset=utf-8")
    return wrapped


# --- home, sign-in, search -------------------------------------------------------------------

@login_required
def home(request):
    """Straight to the user's page when they hold one role; a choice otherwise."""
    roles = [name for name, held in roles_of(request.user).items() if held]
    targets = {"publisher": "pages:publisher-videos", "merchant": "catalog-pages:products", "reviewer": "pages:review"}
    if len(roles) == 1:
        return redirect(targets[roles[0]])
    return page(request, "matching/home.html")


@require_GET
@role_required(has_any_role)
@answers_400
def search(request):
    """Text search with the API's visibility rules: only the videos and products this user may see."""
    query = request.GET.get("q", "").strip()
    result, error = None, ""
    if query:
        try:
            result = services.search_text(query, settings.MVMATCH_SUGGESTIONS, category_from(request.GET.get("category")),
                                          videos=services.visible_videos(request.user),
                                          products=services.visible_products(request.user))
        except (services.NoActiveModel, services.TextSearchUnavailable) as exc:
            error = str(exc)
        except ValueError as exc:
            raise BadRequest(str(exc))
    return page(request, "matching/search.html", {"search_query": query, "result": result, "error": error})


# --- publisher ----------------------------------------------------------------------------------

def own_video(request, pk: int) -> MicroVideo:
    """The signed-in publisher's video; someone else's is a 404, like a missing one."""
    return get_object_or_404(MicroVideo.objects.defer("detail").select_related("category", "predicted_category"),
                             pk=pk, publisher=request.user)


@require_GET
@role_required(is_publisher)
def publisher_videos(request):
    videos = (MicroVideo.objects.filter(publisher=request.user).defer("detail")
              .prefetch_related("keyframes").select_related("predicted_category"))
    return page(request, "matching/publisher_videos.html",
                {"videos": videos, "caption_limit": settings.MVMATCH_MAX_CAPTION_CHARS})


@require_POST
@role_required(is_publisher)
def publisher_upload(request):
    """The drag-and-drop form's target: validated like the API, answered with the new row (202) or the reason."""
    fields = {name: value for name, value in request.POST.items() if value and name != "csrfmiddlewaretoken"}
    serializer = MicroVideoSerializer(data=fields | ({"file": request.FILES["file"]} if "file" in request.FILES else {}))
    if not serializer.is_valid():
        reasons = "; ".join(f"{field}: {' '.join(map(str, errors))}" for field, errors in serializer.errors.items())
        return HttpResponse(reasons, status=400, content_type="text/plain; charset=utf-8")
    data = serializer.validated_data
    try:
        video = services.upload_video(request.user, data["file"], data.get("caption", ""), data.get("category"))
    except VideoError as exc:
        return HttpResponse(f"file: {exc}", status=400, content_type="text/plain; charset=utf-8")
    except services.DuplicateUpload as exc:
        return HttpResponse(str(exc), status=409, content_type="text/plain; charset=utf-8")
    return page(request, "matching/_video_row.html", {"video": video}, status=202)


@require_GET
@role_required(is_publisher)
def publisher_video_row(request, pk: int):
    """The list row of one video; it keeps polling itself while the video is queued or processing."""
    return page(request, "matching/_video_row.html", {"video": own_video(request, pk)})


@require_GET
@role_required(is_publisher)
@answers_400
def publisher_video(request, pk: int):
    video = own_video(request, pk)
    return page(request, "matching/publisher_video.html",
                {"video": video, "keyframes": list(video.keyframes.all()),
                 "filter_categories": Category.objects.filter(level__lt=Category.Level.LOWER),
                 **suggestions_context(request, video)})


@require_GET
@role_required(is_publisher)
@answers_400
def publisher_suggestions(request, pk: int):
    """The suggestions list alone: the category filter and the status poll swap it in."""
    video = own_video(request, pk)
    if request.GET.get("poll") and video.status in FINISHED:
        response = HttpResponse()
        response["HX-Refresh"] = "true"  # the page now has its player, frames and suggestions
        return response
    return page(request, "matching/_suggestions.html", {"video": video, **suggestions_context(request, video)})


def suggestions_context(request, video: MicroVideo) -> dict:
    """Ranked products for the video with, for each, the keyframe that drove the match."""
    category = category_from(request.GET.get("category"))
    if video.status != IndexState.INDEXED:
        return {"hits": [], "category": category}
    frames = {kf.position: kf for kf in video.keyframes.all()}
    hits = services.rank(video, settings.MVMATCH_SUGGESTIONS, category)
    return {"hits": [(hit, frames.get(hit.frame_position)) for hit in hits], "category": category}


@require_POST
@role_required(is_publisher)
def publisher_publish(request, pk: int):
    video = own_video(request, pk)
    serializer = MicroVideoSerializer(video, data={"published": request.POST.get("published") == "1"}, partial=True)
    serializer.is_valid(raise_exception=True)  # as the API's PATCH: only `published` may change
    serializer.save()
    return redirect("pages:publisher-video", pk=video.pk)


@require_POST
@role_required(is_publisher)
def publisher_delete(request, pk: int):
    services.delete_video(own_video(request, pk))
    return redirect("pages:publisher-videos")


# --- reviewer -----------------------------------------------------------------------------------

class ReviewFilters(forms.Form):
    category = forms.ModelChoiceField(Category.objects.filter(level__lt=Category.Level.LOWER), required=False,
                                      empty_label="all categories")
    min_score = forms.FloatField(required=False, label="score from")
    max_score = forms.FloatField(required=False, label="score to")
    model_version = forms.ModelChoiceField(ModelVersion.objects.all(), required=False, empty_label="all models")

    def queue_filters(self) -> review_queue.Filters:
        if not self.is_valid():
            raise BadRequest("; ".join(f"{f}: {' '.join(e)}" for f, e in self.errors.items()))
        return review_queue.Filters(**self.cleaned_data)


def review_card(request, filters: review_queue.Filters, match: Match | None = None):
    match = match or review_queue.next_match(filters, request.session)
    return page(request, "matching/_review_card.html", {
        "match": match, "left": review_queue.pending(filters).count(),
        "keyframes": list(match.video.keyframes.all()) if match else [],
        "photos": list(match.product.images.all()) if match else [],
        "can_undo": review_queue.can_undo(request.session)})


@require_GET
@role_required(is_reviewer)
@answers_400
def review(request):
    form = ReviewFilters(request.GET)
    filters = form.queue_filters()
    return page(request, "matching/review.html", {
        "form": form, "filters_query": request.GET.urlencode(),
        "card": review_card(request, filters).content.decode()})


@require_POST
@role_required(is_reviewer)
@answers_400
def review_decide(request, pk: int):
    """Approve, reject or skip one match (saved at once), then the next match of the same filters."""
    filters = ReviewFilters(request.GET).queue_filters()
    action = request.POST.get("action")
    if action not in ("approve", "reject", "skip"):
        raise BadRequest("action must be approve, reject or skip")
    match = get_object_or_404(Match, pk=pk)
    if action == "skip":
        review_queue.skip(match, request.session)
    else:
        review_queue.decide(match, request.user, request.session,
                            Match.Review.APPROVED if action == "approve" else Match.Review.REJECTED)
    return review_card(request, filters)


@require_POST
@role_required(is_reviewer)
@answers_400
def review_undo(request):
    """Take back this reviewer's last decision or skip; that match is shown again."""
    filters = ReviewFilters(request.GET).queue_filters()
    return review_card(request, filters, review_queue.undo(request.user, request.session))


app_name = "pages"
urlpatterns = [
    path("", home, name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(next_page="pages:home"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="pages:login"), name="logout"),
    path("search/", search, name="search"),
    path("publisher/", publisher_videos, name="publisher-videos"),
    path("publisher/upload/", publisher_upload, name="publisher-upload"),
    path("publisher/videos/<id:pk>/", publisher_video, name="publisher-video"),
    path("publisher/videos/<id:pk>/row/", publisher_video_row, name="publisher-video-row"),
    path("publisher/videos/<id:pk>/suggestions/", publisher_suggestions, name="publisher-suggestions"),
    path("publisher/videos/<id:pk>/publish/", publisher_publish, name="publisher-publish"),
    path("publisher/videos/<id:pk>/delete/", publisher_delete, name="publisher-delete"),
    path("review/", review, name="review"),
    path("review/<id:pk>/decide/", review_decide, name="review-decide"),
    path("review/undo/", review_undo, name="review-undo"),
]
