from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from matching import services
from matching.models import MicroVideo
from matching.serializers import (LookupParams, MicroVideoSerializer, ProductHitSerializer, TextSearchParams,
                                  TextSearchSerializer, product_summary, video_summary)
from ml.video import VideoError


def lookup_response(request, obj, lookup, serializer_class) -> Response:
    """Shared body of the two top-k endpoints: validate ?k and ?category, run the lookup."""
    params = LookupParams(data=request.query_params)
    params.is_valid(raise_exception=True)
    try:
        matches = lookup(obj, params.validated_data["k"], params.validated_data.get("category"))
    except services.NotIndexed as exc:
        return Response({"detail": str(exc), "status": obj.status, "error": obj.error},
                        status=status.HTTP_409_CONFLICT)
    return Response(serializer_class(matches, many=True, context={"request": request}).data)


class MicroVideoViewSet(mixins.CreateModelMixin, mixins.RetrieveModelMixin, mixins.ListModelMixin,
                        mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """A publisher's micro-videos: upload (multipart `file` + `caption`), poll `status`, read suggestions."""

    serializer_class = MicroVideoSerializer
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        qs = (MicroVideo.objects.prefetch_related("keyframes").select_related("model_version", "category",
                                                                            "predicted_category")
              .defer("detail"))
        return qs if self.request.user.is_staff else qs.filter(publisher=self.request.user)

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
        return Response(self.get_serializer(video).data, status=status.HTTP_202_ACCEPTED)

    def perform_destroy(self, instance):
        services.delete_video(instance)

    @extend_schema(parameters=[LookupParams], responses=ProductHitSerializer(many=True))
    @action(detail=True, methods=["get"])
    def suggestions(self, request, pk=None):
        """Ranked ad suggestions: the products to embed in this video, best first."""
        return lookup_response(request, self.get_object(), services.suggest_products, ProductHitSerializer)


class TextSearchView(APIView):
    """Text search: micro-videos and products for a free-text query (`?q=`), best first."""

    @extend_schema(parameters=[TextSearchParams], responses=TextSearchSerializer)
    def get(self, request):
        params = TextSearchParams(data=request.query_params)
        params.is_valid(raise_exception=True)
        query, k = params.validated_data["q"], params.validated_data["k"]
        try:
            result = services.search_text(query, k, params.validated_data.get("category"))
        except (services.NoActiveModel, services.TextSearchUnavailable) as exc:  # the server's state, not the query
            return Response({"detail": str(exc)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        except ValueError as exc:
            raise ValidationError({"q": [str(exc)]})
        return Response({
            "query": query,
            "products": [{"score": score, "product": product_summary(p, request)} for p, score in result.products],
            "videos": [{"score": score, "video": video_summary(v)} for v, score in result.videos],
        })
