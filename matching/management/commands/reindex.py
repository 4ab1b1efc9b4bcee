from django.core.management.base import BaseCommand

from catalog.models import Product
from matching.indexing import IndexState
from matching import services
from matching.models import MicroVideo


class Command(BaseCommand):
    help = ("Queue every product and video for embedding with the active model version. Records already "
            "indexed by that version are skipped by the workers, so running it twice costs nothing.")

    def add_arguments(self, parser):
        parser.add_argument("--failed-only", action="store_true", help="Only retry records that failed.")

    def handle(self, *args, failed_only=False, **options):
        version = services.active_model_version()
        counts = {}
        for model in (Product, MicroVideo):
            qs = model.objects.exclude(status=IndexState.INDEXED, model_version=version)
            if failed_only:
                qs = qs.filter(status=IndexState.FAILED)
            counts[model._meta.verbose_name_plural] = services.requeue(qs)
        self.stdout.write(self.style.SUCCESS(
            f"queued for {version.name}: " + ", ".join(f"{n} {name}" for name, n in counts.items())))
