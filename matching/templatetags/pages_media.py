"""`{{ obj|file_url }}`: the permission-checked URL of a video, keyframe or product photo (matching.media)."""
from django import template

from matching.media import url_of

register = template.Library()


@register.filter
def file_url(obj) -> str:
    return (url_of(obj) or "") if obj is not None else ""
