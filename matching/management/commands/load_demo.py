import json
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token
from tqdm import tqdm

from catalog.models import Product
from matching.indexing import IndexState
from catalog.serializers import ProductSerializer
from matching import services
from matching.models import Match, MicroVideo
from mvmatch import roles

DEMO_PASSWORD = "mvmatch-demo"


class Command(BaseCommand):
    help = ("Load the demo: users, a generated catalogue of products with photos and micro-videos, ingested by "
            "the running Celery worker (the same code path as the API), then report how often the true product "
            "is suggested.")

    def add_arguments(self, parser):
        parser.add_argument("--data", default=None, help="Generated dataset dir (default: VAR/demo-data).")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--timeout", type=float, default=900, help="Seconds to wait for the worker.")

    def handle(self, *args, data=None, seed=0, timeout=900, **options):
        from ml.datagen import SIZES, generate_dataset, load_manifest

        root = Path(data) if data else settings.VAR_DIR / "demo-data"
        manifest = (load_manifest(root) if (root / "manifest.json").exists()
                    else generate_dataset(root, SIZES["demo"], seed=seed, progress=sys.stderr.isatty()))
        staff, merchant, publisher = self._users()

        products = {}
        for p in manifest.products_in("test"):
            product = Product.objects.filter(merchant=merchant, sku=p.sku).first()
            if product is None:
                serializer = ProductSerializer(data={
                    "sku": p.sku, "title": p.title, "description": p.description, "price": f"{p.price:.2f}",
                    "category": p.category_path,
                    "photos": [SimpleUploadedFile(Path(rel).name, (root / rel).read_bytes()) for rel in p.images]})
                serializer.is_valid(raise_exception=True)
                product = serializer.save(merchant=merchant)
                services.queue_product(product)
            products[p.sku] = product
        self._wait(Product.objects.filter(pk__in=[p.pk for p in products.values()]), "products", timeout)

        videos = {}
        for v in manifest.videos_in("test"):
            path = root / v.file
            upload = SimpleUploadedFile(path.name, path.read_bytes())
            try:
                videos[v.key] = services.upload_video(publisher, upload, v.caption)
            except services.DuplicateUpload as dup:
                videos[v.key] = dup.existing
        # The demo publisher publishes: the merchant sees where the products fit.
        MicroVideo.objects.filter(pk__in=[v.pk for v in videos.values()]).update(published=True)
        self._wait(MicroVideo.objects.filter(pk__in=[v.pk for v in videos.values()]), "videos", timeout)

        # Placements for every product now that the videos are in the index.
        for product in Product.objects.filter(pk__in=[p.pk for p in products.values()], status=IndexState.INDEXED):
            services.recompute_matches(product)
        self._report(manifest, products, videos, staff)

    def _users(self):
        User = get_user_model()
        staff, created = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        if created:
            staff.set_password(DEMO_PASSWORD)
            staff.save()
        merchant, _ = User.objects.get_or_create(username="merchant")
        publisher, _ = User.objects.get_or_create(username="publisher")
        reviewer, _ = User.objects.get_or_create(username="reviewer", defaults={"is_staff": True})
        merchant.groups.add(Group.objects.get(name=roles.MERCHANT))
        publisher.groups.add(Group.objects.get(name=roles.PUBLISHER))
        reviewer.groups.add(Group.objects.get(name=roles.REVIEWER))
        for user in (merchant, publisher, reviewer):  # they sign in to the pages (deploy/demo.sh prints them)
            if not user.password:  # created just now (or by an older demo) without one
                user.set_password(DEMO_PASSWORD)
                user.save()
        return staff, merchant, publisher

    def _wait(self, queryset, what: str, timeout: float) -> None:
        total = queryset.count()
        deadline = time.monotonic() + timeout
        with tqdm(total=total, desc=f"worker: {what}", unit=what[:-1], disable=not sys.stderr.isatty()) as bar:
            while True:
                done = queryset.filter(status__in=[IndexState.INDEXED, IndexState.FAILED]).count()
                bar.update(done - bar.n)
                if done == total:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(f"timed out: {total - done} {what} still queued; is the Celery worker running?")
                time.sleep(0.5)
        for failed in queryset.filter(status=IndexState.FAILED):
            self.stderr.write(f"{what[:-1]} {failed.pk} failed: {failed.error}")

    def _report(self, manifest, products, videos, staff) -> None:
        """The true product's rank among each video's suggestions: the headline over the generator's own videos,
        then a line per capture condition (the same products filmed under each preset)."""
        from ml.datagen import CONDITIONS

        sku_of = {v.key: v.product_sku for v in manifest.videos}
        rank_of = {}
        for key, video in videos.items():
            match = Match.objects.filter(video=video, product=products[sku_of[key]],
                                         direction=Match.Direction.VIDEO_TO_PRODUCT).first()
            rank_of[key] = match.rank if match else None
        own = [v.key for v in manifest.videos_in("test") if v.capture is None]
        ranks = [rank_of[key] for key in own]
        n = len(ranks)
        top1, top10 = _share(ranks, 1), _share(ranks, 10)
        conditions = {}
        for preset in CONDITIONS:
            filmed = [rank_of[v.key] for v in manifest.videos_in("test") if v.capture == preset]
            if filmed:
                conditions[preset] = {"videos": len(filmed), "top1": round(_share(filmed, 1), 3),
                                      "top10": round(_share(filmed, 10), 3), "ranks": filmed}
        report = {"videos": n, "products": len(products), "top1": round(top1, 3), "top10": round(top10, 3),
                  "chance_top1": round(1 / len(products), 3), "ranks": ranks,
                  "truth": {videos[key].pk: products[sku_of[key]].pk for key in own}, "conditions": conditions}
        (settings.VAR_DIR / "demo-report.json").write_text(json.dumps(report, indent=2))
        self.stdout.write(self.style.SUCCESS(
            f"\n[demo] {n} micro-videos against {len(products)} products: true product ranked first for "
            f"{top1:.0%}, in the top 10 for {top10:.0%} (chance top-1: {1 / len(products):.1%})"))
        if conditions:
            self.stdout.write(f"[demo] the same {max(c['videos'] for c in conditions.values())} products filmed "
                              "under each capture condition (docs/benchmark/robustness.md has the full table):")
            for preset, line in conditions.items():
                self.stdout.write(f"[demo]   {preset:<12} top-1 {line['top1']:4.0%}  top-10 {line['top10']:4.0%}")
        tokens = {u.username: Token.objects.get_or_create(user=u)[0].key
                  for u in get_user_model().objects.filter(username__in=["merchant", "publisher"])}
        self.stdout.write(f"[demo] staff login for the admin: {staff.username} / {DEMO_PASSWORD}")
        self.stdout.write(f"[demo] page logins: publisher, merchant, reviewer / {DEMO_PASSWORD}")
        self.stdout.write(f"[demo] API tokens: merchant {tokens['merchant']}, publisher {tokens['publisher']}")
        pending = Match.objects.filter(status=Match.Review.PENDING).count()
        self.stdout.write(f"[demo] {pending} suggested matches wait for review")


def _share(ranks: list[int | None], k: int) -> float:
    """Share of videos whose true product is among the first ``k`` suggestions."""
    return sum(r is not None and r <= k for r in ranks) / len(ranks)
