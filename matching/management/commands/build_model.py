import sys
from dataclasses import fields

from django.conf import settings
from django.core.management.base import BaseCommand

from matching.model_versions import register_bundle
from matching.models import ModelVersion


class Command(BaseCommand):
    help = ("Train a model bundle on generated data (image tower, then MQMC instance towers) and make it the "
            "active model version. Skips the work when that version already exists.")

    def add_arguments(self, parser):
        from ml.training.build import add_config_arguments

        parser.add_argument("--name", default="demo-v1", help="Model version name.")
        parser.add_argument("--force", action="store_true", help="Train again even if the version exists.")
        add_config_arguments(parser, exclude=("name", "progress"))

    def handle(self, *args, name, force, **options):
        from ml.training.build import BuildConfig, build

        existing = ModelVersion.objects.filter(name=name).first()
        if existing and not force:
            register_bundle(existing.bundle_path, name=name, activate=True)
            self.stdout.write(f"model version {name} exists ({existing.bundle_path}); use --force to retrain")
            return
        cfg = BuildConfig(name=name, progress=sys.stderr.isatty(),  # bars on a terminal, none in a log file
                          **{f.name: options[f.name] for f in fields(BuildConfig) if f.name not in ("name", "progress")})
        out = settings.MVMATCH_MODELS_DIR / name
        meta = build(out, cfg)
        version = register_bundle(out, name=name, activate=True)
        val = meta["metrics"].get("val") or meta["metrics"]["train"]
        self.stdout.write(self.style.SUCCESS(
            f"model version {version} trained in {meta['timings']['total_s']:.0f} s; held-out R@1/R@10 "
            f"video->product {val['v2p_R@1']:.1f}/{val['v2p_R@10']:.1f}, "
            f"product->video {val['p2v_R@1']:.1f}/{val['p2v_R@10']:.1f}"))
        second = meta.get("second_stage", {}).get("two_stage")
        if second:
            self.stdout.write(
                f"with the second stage (re-ranking + category boost, weights {meta['second_stage']['weights']}): "
                f"video->product {second['v2p_R@1']:.1f}/{second['v2p_R@10']:.1f}, "
                f"product->video {second['p2v_R@1']:.1f}/{second['p2v_R@10']:.1f}")
