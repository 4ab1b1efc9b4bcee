from django import template

from matching import health

register = template.Library()


@register.inclusion_tag("admin/mvmatch_health.html")
def health_line():
    """The system's health in one line on the admin's front page (the same report as GET /api/health/)."""
    return {"report": health.report()}
