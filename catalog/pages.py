"""Server-rendered pages for merchants: their products, the product form, and where each product fits.

Validation is the API's (ProductSerializer); lookups and visibility are matching's services.
"""
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import path
from django.views.decorators.http import require_GET, require_http_methods

from catalog.models import Category, Product
from catalog.serializers import ProductSerializer
from catalog.services import resolve_category
from matching import services
from matching.indexing import IndexState
from matching.models import Keyframe
from matching.pages import answers_400, category_from, page, role_required
from ml.serving.ontology import UnknownCategory
from mvmatch.roles import is_merchant
from mvmatch import converters  # noqa: F401  (registers <id:…>: no overflow on huge ids)

CATEGORY_SUGGESTIONS = 12


def own_product(request, pk: int) -> Product:
    """The signed-in merchant's product; someone else's is a 404, like a missing one."""
    return get_object_or_404(Product.objects.defer("detail").select_related("category"), pk=pk,
                             merchant=request.user)


@require_GET
@role_required(is_merchant)
def products(request):
    items = Product.objects.filter(merchant=request.user).defer("detail").select_related("category")
    return page(request, "catalog/products.html", {"products": items.prefetch_related("images")})


@require_GET
@role_required(is_merchant)
def product_row(request, pk: int):
    """The list row of one product; it keeps polling itself while the product is queued or processing.
    With ?poll=1 (the product page) a finished product reloads the page instead."""
    product = own_product(request, pk)
    if request.GET.get("poll") and product.status in (IndexState.INDEXED, IndexState.FAILED):
        response = HttpResponse()
        response["HX-Refresh"] = "true"
        return response
    return page(request, "catalog/_product_row.html", {"product": product})


@require_http_methods(["GET", "POST"])
@role_required(is_merchant)
def product_form(request, pk: int | None = None):
    """Add (pk None) or edit a product; a saved product is queued for embedding like one sent to the API."""
    product = own_product(request, pk) if pk else None
    errors = {}
    if request.method == "POST":
        data = {name: value for name, value in request.POST.items() if name not in ("csrfmiddlewaretoken", "category_search")}
        if request.FILES.getlist("photos"):
            data["photos"] = request.FILES.getlist("photos")
        serializer = ProductSerializer(product, data=data, partial=product is not None)
        if serializer.is_valid():
            saved = services.save_product(serializer, request.user)
            return redirect("catalog-pages:product", pk=saved.pk)
        errors = serializer.errors
    return page(request, "catalog/product_form.html", {
        "product": product, "errors": errors, "values": request.POST if request.method == "POST" else None,
        "category": chosen_category(request.POST.get("category")) or (product.category if product else None)},
        status=400 if errors else 200)


def chosen_category(value: str | None) -> Category | None:
    """The category the form sent back (shown again beside the errors), if it is one."""
    try:
        return resolve_category(value) if value else None
    except UnknownCategory:
        return None


@require_GET
@role_required(is_merchant)
@answers_400
def product_detail(request, pk: int):
    """The product and the published micro-videos it fits, best first, each with its moment."""
    product = own_product(request, pk)
    category = category_from(request.GET.get("category"))
    placements = []
    if product.status == IndexState.INDEXED:
        hits = services.rank(product, settings.MVMATCH_SUGGESTIONS, category,
                             videos=services.visible_videos(request.user))
        frames = {(kf.video_id, kf.position): kf for kf in Keyframe.objects.filter(video__in=[h.video for h in hits])}
        placements = [(hit, frames.get((hit.video.pk, hit.frame_position))) for hit in hits]
    return page(request, "catalog/product.html", {
        "product": product, "placements": placements, "category": category,
        "filter_categories": Category.objects.filter(level__lt=Category.Level.LOWER)})


@require_GET
@login_required
def categories(request):
    """Search-as-you-type over the ontology: names, source spellings and paths containing the text."""
    text = request.GET.get("category_search", "").strip()
    found = Category.objects.none()
    if text:
        found = Category.objects.filter(Q(name__icontains=text) | Q(original_name__icontains=text)
                                        | Q(path__icontains=text.replace(" ", "-")))
        level = {label: value for value, label in Category.Level.choices}.get(request.GET.get("level"))
        if level is not None:
            found = found.filter(level=level)
    return page(request, "catalog/_category_options.html", {"options": found[:CATEGORY_SUGGESTIONS]})


app_name = "catalog-pages"
urlpatterns = [
    path("merchant/", products, name="products"),
    path("merchant/products/new/", product_form, name="product-new"),
    path("merchant/products/<id:pk>/", product_detail, name="product"),
    path("merchant/products/<id:pk>/edit/", product_form, name="product-edit"),
    path("merchant/products/<id:pk>/row/", product_row, name="product-row"),
    path("merchant/categories/", categories, name="categories"),
]
