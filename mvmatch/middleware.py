"""Refuse an oversized request from its Content-Length, before anything reads its body."""
from django.conf import settings
from django.http import JsonResponse


class RequestSizeLimit:
    """A 413 for a declared body above MVMATCH_MAX_REQUEST_BYTES, so a huge upload is not received first.

    Bodies without a Content-Length (chunked) fall through to the per-file checks after parsing."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        declared = request.META.get("CONTENT_LENGTH") or "0"
        limit = settings.MVMATCH_MAX_REQUEST_BYTES
        if declared.isdigit() and int(declared) > limit:
            # The server, not the application, decides what happens to the unread body (WSGI forbids
            # setting Connection here); the answer goes out before it is received.
            return JsonResponse(
                {"detail": f"request body is {int(declared)} bytes; the limit is {limit} bytes"}, status=413)
        return self.get_response(request)
