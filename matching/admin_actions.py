"""Admin actions that products (catalog) and micro-videos (matching) share."""
from django.contrib import admin

from matching import services


@admin.action(description="Recompute matches (pending rows are replaced; decisions are kept)",
              permissions=["change"])
def recompute_matches(modeladmin, request, queryset):
    recorded, not_indexed = services.recompute_all(queryset)
    modeladmin.message_user(request, f"matches recomputed for {recorded}; {not_indexed} not indexed, skipped")
