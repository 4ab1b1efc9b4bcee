from django.apps import AppConfig


class MatchingConfig(AppConfig):
    name = "matching"
    verbose_name = "Matching"

    def ready(self):
        from matching import worker  # noqa: F401  connects the worker's signal handlers
