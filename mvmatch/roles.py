"""Who may do what: the three roles as Django groups, their predicates, and the API's permission classes.

A role is a group holding model permissions (created by the migration matching/0004_roles); a user may
hold several. Superusers pass every check. Staff accounts read everything through the API and decide
matches in the admin only with ``matching.change_match``. Object ownership is checked on top of the role:
a merchant's products and a publisher's videos are theirs alone to change. The README's "Who may do what"
table is walked by tests/test_roles.py.
"""
from __future__ import annotations

from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.settings import api_settings

MERCHANT = "merchant"
PUBLISHER = "publisher"
REVIEWER = "reviewer"

# Group -> the model permissions ("app_label.codename") it holds. Data for the migration and for tests.
ROLE_PERMISSIONS: dict[str, tuple[str, ...]] = {
    MERCHANT: ("catalog.add_product", "catalog.change_product", "catalog.delete_product", "catalog.view_product",
               "catalog.add_productimage", "catalog.change_productimage", "catalog.delete_productimage",
               "catalog.view_productimage"),
    PUBLISHER: ("matching.add_microvideo", "matching.change_microvideo", "matching.delete_microvideo",
                "matching.view_microvideo", "matching.view_keyframe"),
    REVIEWER: ("matching.view_match", "matching.change_match", "matching.view_matchdecision",
               "matching.view_microvideo", "matching.view_keyframe", "catalog.view_product",
               "catalog.view_productimage", "catalog.view_category"),
}


def _in_group(user, name: str) -> bool:
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name=name).exists()


def is_merchant(user) -> bool:
    return _in_group(user, MERCHANT)


def is_publisher(user) -> bool:
    return _in_group(user, PUBLISHER)


def is_reviewer(user) -> bool:
    """May decide matches: the permission counts, not the group name (a superuser has every permission)."""
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.has_perm("matching.change_match"))


def is_staff_reader(user) -> bool:
    """Operations staff read every product and video through the API (and superusers do everything)."""
    return bool(getattr(user, "is_authenticated", False) and user.is_active and user.is_staff)


def has_any_role(user) -> bool:
    return is_merchant(user) or is_publisher(user) or is_reviewer(user) or is_staff_reader(user)


def owns(user, obj) -> bool:
    """The merchant of a product or the publisher of a video (superusers own everything)."""
    if user.is_superuser:
        return True
    owner_id = getattr(obj, "merchant_id", None) or getattr(obj, "publisher_id", None)
    return owner_id is not None and owner_id == user.pk


class _Role(BasePermission):
    """Holders of the role may use the endpoint; staff may read it. Objects: staff read, only the owner changes."""

    message = "this endpoint needs the {role} role"
    role = ""

    def has_role(self, user) -> bool:
        raise NotImplementedError

    def has_permission(self, request, view) -> bool:
        self.message = type(self).message.format(role=self.role)
        user = request.user
        return self.has_role(user) or (is_staff_reader(user) and request.method in SAFE_METHODS)

    def has_object_permission(self, request, view, obj) -> bool:
        self.message = f"only the owner may change this {obj._meta.verbose_name}"
        return owns(request.user, obj) or (is_staff_reader(request.user) and request.method in SAFE_METHODS)


class IsMerchant(_Role):
    role = MERCHANT

    def has_role(self, user) -> bool:
        return is_merchant(user)


class IsPublisher(_Role):
    role = PUBLISHER

    def has_role(self, user) -> bool:
        return is_publisher(user)


class HasAnyRole(BasePermission):
    """Text search and similar read-only views open to every role (each sees what visibility allows)."""

    message = "this endpoint needs a merchant, publisher or reviewer role"

    def has_permission(self, request, view) -> bool:
        return has_any_role(request.user)


class IssueTokenView(ObtainAuthToken):
    """`POST /api/auth/token/`: username and password for an API token, rate-limited per client address."""

    throttle_classes = api_settings.DEFAULT_THROTTLE_CLASSES  # ObtainAuthToken itself sets none
    throttle_scopes = {"post": "token"}
