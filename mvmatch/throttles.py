"""Rate limits by scope on top of DRF's per-user and per-address throttles (rates in settings, from the env)."""
from rest_framework.throttling import SimpleRateThrottle


class ActionScopedThrottle(SimpleRateThrottle):
    """Counts the requests of the actions a view names in ``throttle_scopes`` ({action or method: scope}),
    per user, or per client address when anonymous; other requests pass untouched."""

    def __init__(self):  # the scope, hence the rate, is known per request only
        pass

    def allow_request(self, request, view):
        scopes = getattr(view, "throttle_scopes", {})
        self.scope = scopes.get(getattr(view, "action", None) or "") or scopes.get(request.method.lower())
        if not self.scope:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request, view):
        ident = request.user.pk if request.user and request.user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}

