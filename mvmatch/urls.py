from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from catalog.views import CategoryViewSet, ProductViewSet
from matching.views import HealthView, MicroVideoViewSet, TextSearchView
from mvmatch.roles import IssueTokenView

router = DefaultRouter()
router.register("categories", CategoryViewSet, basename="category")
router.register("products", ProductViewSet, basename="product")
router.register("videos", MicroVideoViewSet, basename="video")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include(router.urls)),
    path("api/search/", TextSearchView.as_view(), name="api-search"),
    path("api/health/", HealthView.as_view(), name="api-health"),
    path("api/auth/token/", IssueTokenView.as_view(), name="api-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Pages for publishers, reviewers (matching.pages) and merchants (catalog.pages).
    path("", include("matching.pages")),
    path("", include("catalog.pages")),
    # Uploaded videos, keyframes and photos, each after a permission check (no public media URL).
    path("", include("matching.media")),
]
