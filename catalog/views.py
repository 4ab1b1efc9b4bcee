from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

from catalog.models import Category, Product
from catalog.serializers import CategoryFilterParams, CategorySerializer, ProductSerializer
from matching import services
from matching.serializers import LookupParams, MatchSerializer, VideoHitSerializer
from matching.views import lookup_response, recompute_response, with_worker_warning
from mvmatch.converters import DatabaseId
from mvmatch.roles import IsMerchant, is_staff_reader


@extend_schema_view(list=extend_schema(parameters=[CategoryFilterParams]))
class CategoryViewSet(viewsets.ReadOnlyModelViewSet):
    """The ontology: filter with ?level=upper|middle|lower and ?parent=<id>."""

    serializer_class = CategorySerializer
    lookup_value_regex = DatabaseId.regex

    def get_queryset(self):
        qs = Category.objects.all()
        if self.action != "list":
            return qs
        params = CategoryFilterParams(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        if "level" in params.validated_data:
            qs = qs.filter(level=params.validated_data["level"])
        if "parent" in params.validated_data:
            qs = qs.filter(parent_id=params.validated_data["parent"])
        return qs


class ProductViewSet(viewsets.ModelViewSet):
    """A merchant's products. Creating or editing one queues it for embedding and indexing."""

    serializer_class = ProductSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]
    permission_classes = [IsMerchant]
    lookup_value_regex = DatabaseId.regex
    throttle_scopes = {"create": "upload", "videos": "lookup", "recompute": "lookup"}

    def get_queryset(self):
        qs = Product.objects.select_related("category").prefetch_related("images").defer("detail")
        return qs if is_staff_reader(self.request.user) else qs.filter(merchant=self.request.user)

    def perform_create(self, serializer):
        services.save_product(serializer, self.request.user)

    def create(self, request, *args, **kwargs):
        response = super().create(request, *args, **kwargs)
        with_worker_warning(response.data)
        return response

    def perform_update(self, serializer):
        services.save_product(serializer)

    def perform_destroy(self, instance):
        services.delete_product(instance)

    @extend_schema(parameters=[LookupParams], responses=VideoHitSerializer(many=True))
    @action(detail=True, methods=["get"])
    def videos(self, request, pk=None):
        """The top-k micro-videos this product fits, best first: the merchant's own and published ones."""
        return lookup_response(request, self.get_object(), videos=services.visible_videos(request.user))

    @extend_schema(request=None, responses=MatchSerializer(many=True))
    @action(detail=True, methods=["post"])
    def recompute(self, request, pk=None):
        """Record the videos this product fits in the review queue."""
        return recompute_response(request, self.get_object())
