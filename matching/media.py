"""Uploaded files (videos, keyframes, product photos) served only to those who may see their record.

There is no public media URL: every file goes through these views, which apply the same visibility as
the API (``services.visible_videos`` / ``visible_products``) and answer 404 for a file the user may not
see. With MVMATCH_MEDIA_OFFLOAD set, the web server sends the bytes (X-Accel-Redirect / X-Sendfile);
otherwise Django streams them.
"""
import mimetypes
import re
from urllib.parse import quote

from django.conf import settings
from django.http import FileResponse, Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.views import APIView

from catalog.models import ProductImage
from matching import services
from matching.models import Keyframe, MicroVideo
from mvmatch import converters  # noqa: F401  (registers <id:…>)


def file_response(field, range_header: str = "") -> HttpResponse:
    """The bytes of a stored file (those of ``range_header``, if any), or the header that has the front web
    server send them."""
    if not field or not field.storage.exists(field.name):
        raise Http404("file not found")
    content_type = mimetypes.guess_type(field.name)[0] or "application/octet-stream"
    offload = settings.MVMATCH_MEDIA_OFFLOAD
    if offload == "nginx":
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = settings.MVMATCH_MEDIA_INTERNAL_URL.rstrip("/") + "/" + quote(field.name)
    elif offload == "sendfile":
        response = HttpResponse(content_type=content_type)
        response["X-Sendfile"] = field.path
    else:
        response = byte_range(field, range_header, content_type) or FileResponse(field.open("rb"),
                                                                                 content_type=content_type)
        response["Accept-Ranges"] = "bytes"  # a video player can seek only when the server takes ranges
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response


BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
RANGE_CHUNK = 256 * 1024


def byte_range(field, header: str, content_type: str) -> HttpResponse | None:
    """206 with one requested byte range (RFC 9110), 416 if it lies outside the file; None when the header
    asks for no single range (the whole file is sent)."""
    match = BYTE_RANGE.fullmatch(header.strip())
    if not match or match.groups() == ("", ""):
        return None
    size = field.size
    first, last = match.groups()
    if first:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    else:  # a suffix: the last N bytes
        start, end = max(0, size - int(last)), size - 1
    if start >= size or start > end:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response

    def chunks():
        with field.open("rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                data = fh.read(min(RANGE_CHUNK, left))
                if not data:
                    return
                left -= len(data)
                yield data

    response = StreamingHttpResponse(chunks(), status=206, content_type=content_type)
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Content-Length"] = str(end - start + 1)
    return response


@extend_schema(exclude=True)  # binary files, not part of the JSON API's schema
class _MediaView(APIView):
    # Session first: an anonymous request gets 403, not a 401 challenge; pages' <img> tags use the session.
    authentication_classes = [SessionAuthentication, TokenAuthentication]
    throttle_classes = []  # a review page shows hundreds of thumbnails; each request is still permission-checked


class VideoFileView(_MediaView):
    def get(self, request, pk: int):
        return file_response(get_object_or_404(services.visible_videos(request.user), pk=pk).file,
                             request.headers.get("Range", ""))


class KeyframeFileView(_MediaView):
    def get(self, request, pk: int):
        return file_response(get_object_or_404(
            Keyframe.objects.filter(video__in=services.visible_videos(request.user)), pk=pk).image)


class PhotoFileView(_MediaView):
    def get(self, request, pk: int):
        return file_response(get_object_or_404(
            ProductImage.objects.filter(product__in=services.visible_products(request.user)), pk=pk).image)


urlpatterns = [
    path("files/videos/<id:pk>/", VideoFileView.as_view(), name="media-video"),
    path("files/keyframes/<id:pk>/", KeyframeFileView.as_view(), name="media-keyframe"),
    path("files/photos/<id:pk>/", PhotoFileView.as_view(), name="media-photo"),
]


def url_of(obj, request=None) -> str | None:
    """The URL that serves obj's file (a MicroVideo, Keyframe or ProductImage); absolute with a request."""
    name = {MicroVideo: "media-video", Keyframe: "media-keyframe", ProductImage: "media-photo"}[type(obj)]
    field = obj.file if isinstance(obj, MicroVideo) else obj.image
    if not field:
        return None
    url = reverse(name, kwargs={"pk": obj.pk})
    return request.build_absolute_uri(url) if request is not None else url
