from django.core.management.base import BaseCommand

from catalog.services import default_ontology_path, sync_ontology
from ml.serving.ontology import load_ontology


class Command(BaseCommand):
    help = "Load (or update) the 3-level category ontology from the MQMC JSON file."

    def add_arguments(self, parser):
        parser.add_argument("--path", help="Ontology JSON (default: ../shared/ontology or the bundled copy).")

    def handle(self, *args, path=None, **options):
        path = path or default_ontology_path()
        counts = sync_ontology(load_ontology(path))
        self.stdout.write(
            self.style.SUCCESS(
                f"ontology {path}: {counts['total']} categories ({counts['created']} created, {counts['updated']} updated)"
            )
        )
