from django.core.management.base import BaseCommand

from matching import reconcile


class Command(BaseCommand):
    help = ("Requeue work stranded by dead workers and repair drift between the database and the index "
            "(the workers run the first part every MVMATCH_RECONCILE_SECONDS by themselves).")

    def add_arguments(self, parser):
        parser.add_argument("--stuck-only", action="store_true", help="Only requeue stranded work; skip the index check.")

    def handle(self, *args, stuck_only=False, **options):
        report = reconcile.sweep() if stuck_only else reconcile.reconcile()
        for line in report.details:
            self.stdout.write(f"fixed {line}")
        self.stdout.write(self.style.SUCCESS("nothing to fix" if not report else
                                             "; ".join(f"{n} {what}" for what, n in report.counts.items())))
