from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from matching import health, services
from matching.models import MicroVideo
from matching.serializers import (HealthSerializer, LookupParams, MatchSerializer, MicroVideoSerializer,
                                  ProductHitSerializer, TextSearchParams, TextSearchSerializer, VideoHitSerializer,
                                  VideoPublishSerializer, product_summary, video_summary)
from ml.serving.video import VideoError
from mvmatch.converters import DatabaseId
from mvmatch.roles import HasAnyRole, IsPublisher, is_staff_reader


def lookup_response(request, obj, videos=None) -> Response:
    """Shared body of the two top-k endpoints: validate ?k and ?category, rank (reads only)."""
    params = LookupParams(data=request.query_params)
    params.is_valid(raise_exception=True)
    try:
        hits = services.rank(obj, params.validated_data["k"], params.validated_data.get("category"), videos=videos)
    except services.NotIndexed as exc:
        return _not_indexed(obj, exc)
    serializer_class = ProductHitSerializer if isinstance(obj, MicroVideo) else VideoHitSerializer
    return Response(serializer_class(hits, many=True, context={"request": request}).data)


def recompute_response(request, obj) -> Response:
    """Record obj's current top list in the review queue (reviewed decisions are kept)."""
    try:
        matches = services.recompute_matches(obj)
    except services.NotIndexed as exc:
        return _not_indexed(obj, exc)
    return Response(MatchSerializer(matches, many=True).data)


def _not_indexed(obj, exc) -> Response:
    return Response({"detail": str(exc), "status": obj.status, "error": obj.error}, status=status.HTTP_409_CONFLICT)


def with_worker_warning(data: dict) -> dict:
    """An accepted upload says so when no worker is running to process it."""
    if not health.alive_workers().exists():
        data["warning"] = "no worker is running: the item stays queued until one starts"
    return data


@extend_schema_view(partial_update=extend_schema(request=VideoPublishSerializer))
class MicroVideoViewSet(mixins.CreateModelMixin, mixins.RetrieveModelMixin, mixins.ListModelMixin,
                        mixins.UpdateModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """A publisher's micro-videos: upload (multipart `file` + `caption`), poll `status`, read suggestions,
    publish (PATCH `published`)."""

    serializer_class = MicroVideoSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    permission_classes = [IsPublisher]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    lookup_value_regex = DatabaseId.regex
    throttle_scopes = {"create": "upload", "suggestions": "lookup", "recompute": "lookup"}

    def get_queryset(self):
        qs = (MicroVideo.objects.prefetch_related("keyframes").select_related("model_version", "category",
                                                                            "predicted_category")
              .defer("detail"))
        return qs if is_staff_reader(self.request.user) else qs.filter(publisher=self.request.user)

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            video = services.upload_video(request.user, data["file"], data.get("caption", ""), data.get("category"))
        except VideoError as exc:
            raise ValidationError({"file": [str(exc)]})
        except services.DuplicateUpload as exc:
            return Response({"detail": str(exc), "id": exc.existing.pk, "status": exc.existing.status},
                            status=status.HTTP_409_CONFLICT)
        return Response(with_worker_warning(self.get_serializer(video).data), status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance):
        services.delete_video(instance)

    @extend_schema(parameters=[LookupParams], responses=ProductHitSerializer(many=True))
    @action(detail=True, methods=["get"])
    def suggestions(self, request, pk=None):
        """Ranked ad suggestions: the products to embed in this video, best first."""
        return lookup_response(request, self.get_object())

    @extend_schema(request=None, responses=MatchSerializer(many=True))
    @action(detail=True, methods=["post"])
    def recompute(self, request, pk=None):
        """Record this video's current ad suggestions in the review queue."""
        return recompute_response(request, self.get_object())


class TextSearchView(APIView):
    """Text search: micro-videos and products for a free-text query (`?q=`), best first; only what the
    caller may see (services.visible_videos / visible_products)."""

    permission_classes = [HasAnyRole]
    throttle_scopes = {"get": "lookup"}

    @extend_schema(parameters=[TextSearchParams], responses=TextSearchSerializer)
    def get(self, request):
        params = TextSearchParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        query, k = params.validated_data["q"], params.validated_data["k"]
        try:
            result = services.search_text(query, k, params.validated_data.get("category"),
                                          videos=services.visible_videos(request.user),
                                          products=services.visible_products(request.user))
        except (services.NoActiveModel, services.TextSearchUnavailable) as exc:  # the server's state, not the query
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        except ValueError as exc:
            raise ValidationError({"q": [str(exc)]})
        return Response({
            "query": query,
            "products": [{"score": score, "product": product_summary(p, request)} for p, score in result.products],
            "videos": [{"score": score, "video": video_summary(v)} for v, score in result.videos],
        })


class HealthView(APIView):
    """Whether the database, the index and the broker answer, live workers and the queue (503 when not ok).
    Anonymous callers get only ``ok``; staff get the details."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: HealthSerializer, 503: HealthSerializer})
    def get(self, request):
        report = health.report()
        body = report if request.user.is_staff else {"ok": report["ok"]}
        return Response(body, status=status.HTTP_200_OK if report["ok"] else status.HTTP_503_SERVICE_UNAVAILABLE)
