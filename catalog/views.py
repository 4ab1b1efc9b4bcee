from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser

from catalog.models import Category, IndexState, Product
from catalog.serializers import CategorySerializer, ProductSerializer
from matching import services
from matching.serializers import LookupParams, VideoHitSerializer
from matching.views import lookup_response


class CategoryViewSet(viewsets.ReadOnlyModelViewSet):
    """The ontology: filter with ?level=upper|middle|lower and ?parent=<id>."""

    serializer_class = CategorySerializer

    def get_queryset(self):
        qs = Category.objects.all()
        level = self.request.query_params.get("level")
        if level:
            qs = qs.filter(level={label: value for value, label in Category.Level.choices}.get(level, -1))
        if parent := self.request.query_params.get("parent"):
            qs = qs.filter(parent_id=parent)
        return qs


class ProductViewSet(viewsets.ModelViewSet):
    """A merchant's products. Creating or editing one queues it for embedding and indexing."""

    serializer_class = ProductSerializer
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    def get_queryset(self):
        qs = Product.objects.select_related("category").prefetch_related("images").defer("detail")
        return qs if self.request.user.is_staff else qs.filter(merchant=self.request.user)

    def perform_create(self, serializer):
        product = serializer.save(merchant=self.request.user)
        services.queue_product(product)

    def perform_update(self, serializer):
        product = serializer.save(status=IndexState.QUEUED, error="")
        services.queue_product(product)

    def perform_destroy(self, instance):
        services.delete_product(instance)

    @extend_schema(parameters=[LookupParams], responses=VideoHitSerializer(many=True))
    @action(detail=True, methods=["get"])
    def videos(self, request, pk=None):
        """The top-k micro-videos this product fits, best first."""
        return lookup_response(request, self.get_object(), services.suggest_videos, VideoHitSerializer)
