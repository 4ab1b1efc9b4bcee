from django.core.management.base import BaseCommand, CommandError

from matching.model_versions import register_bundle


class Command(BaseCommand):
    help = "Record a trained model bundle as a model version (optionally making it the active one)."

    def add_arguments(self, parser):
        parser.add_argument("bundle", help="Bundle directory written by `python -m ml.training.build`.")
        parser.add_argument("--name", help="Version name (default: the bundle's own name).")
        parser.add_argument("--activate", action="store_true", help="Make it the model new uploads are embedded with.")

    def handle(self, *args, bundle, name=None, activate=False, **options):
        try:
            version = register_bundle(bundle, name=name, activate=activate)
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc))
        self.stdout.write(self.style.SUCCESS(f"model version {version}: {version.bundle_path}"))
