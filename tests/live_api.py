"""A running web server on a migrated database with one account per role and a few objects, for the tests
that talk to the live API (tests/test_security.py, tests/test_fuzz.py). No worker: uploads stay queued."""
from __future__ import annotations

import json
from pathlib import Path

from tests.stack import Stack

# Accounts: name -> (groups, is_staff, is_superuser)
ACCOUNTS = {
    "merchant": (["merchant"], False, False),
    "publisher": (["publisher"], False, False),
    "reviewer": (["reviewer"], True, False),
    "norole": ([], False, False),
}

_SEED = """
import io, json
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.files.base import ContentFile
from PIL import Image
from rest_framework.authtoken.models import Token
from catalog.models import Category, Product, ProductImage
from matching.models import Keyframe, MicroVideo
accounts = json.loads({accounts!r})
tokens = {{}}
for name, (groups, staff, superuser) in accounts.items():
    user = get_user_model().objects.create_user(name, password="pw-" + name, is_staff=staff, is_superuser=superuser)
    user.groups.add(*Group.objects.filter(name__in=groups))
    tokens[name] = Token.objects.create(user=user).key
buf = io.BytesIO(); Image.new("RGB", (32, 32), (200, 0, 0)).save(buf, format="PNG")
merchant, publisher = (get_user_model().objects.get(username=n) for n in ("merchant", "publisher"))
product = Product.objects.create(merchant=merchant, title="red bag", price=5,
                                 category=Category.objects.get(path="clothes/bags/backpack"))
image = ProductImage(product=product); image.image.save("p.png", ContentFile(buf.getvalue())); image.save()
for published in (False, True):
    video = MicroVideo(publisher=publisher, caption=f"clip published={{published}}", published=published,
                       sha256=str(published).ljust(64, "0"))
    video.file.save("clip.mp4", ContentFile(b"bytes")); video.save()
    frame = Keyframe(video=video, position=0, timestamp=0.0)
    frame.image.save("k.png", ContentFile(buf.getvalue())); frame.save()
print(json.dumps(tokens))
"""


def start_api(workdir: Path, **env: str) -> tuple[Stack, dict[str, str]]:
    """The server (environment overrides in ``env``) and an API token per account name."""
    stack = Stack(workdir)
    stack.env.update(env)
    stack.manage("migrate", "--noinput", "-v0")
    stack.manage("load_ontology")
    tokens = json.loads(stack.shell(_SEED.format(accounts=json.dumps(ACCOUNTS))).splitlines()[-1])
    stack.start_web()
    return stack, tokens
