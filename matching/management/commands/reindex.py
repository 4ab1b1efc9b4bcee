from django.core.management.base import BaseCommand

from catalog.models import IndexState, Product
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
        for model, queue in ((Product, services.queue_product), (MicroVideo, services.queue_video)):
            qs = model.objects.exclude(status=IndexState.INDEXED, model_version=version)
            if failed_only:
                qs = qs.filter(status=IndexState.FAILED)
            ids = list(qs.values_list("pk", flat=True))
            model.objects.filter(pk__in=ids).update(status=IndexState.QUEUED, error="")
            for obj in model.objects.filter(pk__in=ids):
                queue(obj)
            counts[model._meta.verbose_name_plural] = len(ids)
        self.stdout.write(self.style.SUCCESS(
            f"queued for {version.name}: " + ", ".join(f"{n} {name}" for name, n in counts.items())))
