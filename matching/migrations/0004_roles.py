"""The published flag, the decision audit, and the three roles as groups with their permissions."""
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def create_roles(apps, schema_editor):
    """Groups and the permissions they hold (mvmatch.roles.ROLE_PERMISSIONS). Permissions are created here if
    the post-migrate signal has not made them yet (a fresh database migrates in one run)."""
    from mvmatch.roles import ROLE_PERMISSIONS

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        for perm in perms:
            app_label, codename = perm.split(".")
            action, model_name = codename.split("_", 1)
            model = apps.get_model(app_label, model_name)
            content_type, _ = ContentType.objects.get_or_create(app_label=app_label, model=model_name)
            permission, _ = Permission.objects.get_or_create(
                content_type=content_type, codename=codename,
                defaults={"name": f"Can {action} {model._meta.verbose_name_raw}"})
            group.permissions.add(permission)


def drop_roles(apps, schema_editor):
    from mvmatch.roles import ROLE_PERMISSIONS

    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLE_PERMISSIONS)).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('matching', '0003_indexing_state_heartbeat'),
        ('catalog', '0004_indexing_state'),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='microvideo',
            name='published',
            field=models.BooleanField(default=False, help_text="Set by the publisher: merchants' lookups and text search show published videos only."),
        ),
        migrations.CreateModel(
            name='MatchDecision',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('username', models.CharField(help_text='Kept if the account is deleted later.', max_length=150)),
                ('decided_at', models.DateTimeField(auto_now_add=True)),
                ('before', models.CharField(choices=[('pending', 'Pending'), ('approved', 'Approved'), ('rejected', 'Rejected')], max_length=10)),
                ('after', models.CharField(choices=[('pending', 'Pending'), ('approved', 'Approved'), ('rejected', 'Rejected')], max_length=10)),
                ('match', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='decisions', to='matching.match')),
                ('user', models.ForeignKey(null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['-decided_at', '-id'],
            },
        ),
        migrations.RunPython(create_roles, drop_roles),
    ]
